"""One small HTTP server per process: ``/healthz``, ``/readyz`` and ``/metrics``.

Standard library only (``http.server`` in a daemon thread). It never calls IMAP or RQ itself: it asks a
health Probe and renders the Prometheus registry plus the scrape-time collectors it was given.
``/healthz`` and ``/readyz`` answer 200 or 503 with a JSON body naming each check.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from mailroom.health import Probe, Report


class HealthServer:
    def __init__(
        self,
        port: int,
        probe: Probe,
        collectors: Sequence[Collector] = (),
        host: str = "0.0.0.0",  # noqa: S104
    ) -> None:
        self.probe = probe
        self.extra = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            self.extra.register(collector)
        self._server = ThreadingHTTPServer((host, port), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def metrics(self) -> bytes:
        return generate_latest(REGISTRY) + generate_latest(self.extra)


def _handler_class(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._report(server.probe.liveness())
            elif path == "/readyz":
                self._report(server.probe.readiness())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, server.metrics())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /healthz, /readyz, /metrics\n")

        def _report(self, report: Report) -> None:
            body = json.dumps(report.as_dict()).encode() + b"\n"
            self._send(200 if report.ok else 503, "application/json", body)

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the logs

    return Handler
