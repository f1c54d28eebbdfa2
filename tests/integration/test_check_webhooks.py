"""`mailroom check` probes each configured webhook endpoint against local HTTP(S) servers: DNS, TLS with
the certificate verified, and an unsigned POST that must be refused (401/403/404)."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from click.testing import CliRunner

from mailroom.check import Outcome
from mailroom.cli import cli
from mailroom.config import WebhookConfig
from mailroom.webhook_check import probe
from tests.support import write_config

pytestmark = pytest.mark.integration


@contextmanager
def endpoint(status: int, tls: trustme.CA | None = None) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP(S) server on loopback answering every POST with ``status``; yields its URL and the headers
    of each request it got."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield (
            f"{scheme}://127.0.0.1:{server.server_address[1]}/api/v4/internal/mail_room/incoming_email",
            seen,
        )
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A CA this process trusts, through the system trust store's own variable (as an operator would)."""
    authority = trustme.CA()
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    return authority


def hook(url: str, tmp_path: Path) -> WebhookConfig:
    secret = tmp_path / "secret"
    secret.write_text("c2VjcmV0")
    return WebhookConfig(url=url, secret_file=secret, allow_insecure=True, timeout=5)


def outcomes(url: str, tmp_path: Path) -> dict[str, tuple[Outcome, str]]:
    return {r.name.rsplit(": ", 1)[1]: (r.outcome, r.detail) for r in probe(hook(url, tmp_path))}


@pytest.mark.parametrize("status", [401, 403, 404])
def test_an_endpoint_that_refuses_unsigned_calls_passes(ca, tmp_path, status):
    with endpoint(status, tls=ca) as (url, seen):
        found = outcomes(url, tmp_path)
    assert found["dns"][0] is Outcome.OK and "127.0.0.1" in found["dns"][1]
    assert found["tls"] == (Outcome.OK, found["tls"][1]) and "certificate verified" in found["tls"][1]
    assert found["unsigned"][0] is Outcome.OK and str(status) in found["unsigned"][1]
    (headers,) = seen  # one request, with no credentials of any kind
    assert not {"authorization", "gitlab-mailroom-api-request"} & set(headers)


@pytest.mark.parametrize(("status", "says"), [(200, "was accepted"), (204, "was accepted"), (500, "got 500")])
def test_an_endpoint_that_accepts_or_breaks_fails(ca, tmp_path, status, says):
    with endpoint(status, tls=ca) as (url, _):
        outcome, detail = outcomes(url, tmp_path)["unsigned"]
    assert outcome is Outcome.FAIL and says in detail


def test_an_untrusted_certificate_fails_tls_and_sends_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with endpoint(401, tls=trustme.CA()) as (url, seen):
        found = outcomes(url, tmp_path)
    assert found["tls"][0] is Outcome.FAIL and "certificate not verified" in found["tls"][1]
    assert "unsigned" not in found and seen == []


def test_dns_failure_and_no_listener(tmp_path):
    assert outcomes("https://no-such-host.invalid/hook", tmp_path)["dns"][0] is Outcome.FAIL
    with endpoint(401) as (url, _):
        closed = url  # the server is gone once the block ends
    found = outcomes(closed, tmp_path)
    assert found["tls"][0] is Outcome.WARN
    assert found["unsigned"][0] is Outcome.FAIL and "ConnectError" in found["unsigned"][1]


def test_mailroom_check_probes_each_webhook_once(ca, redis_url, tmp_path):
    with endpoint(200, tls=ca) as (url, seen):
        secret = tmp_path / "secret"
        secret.write_text("c2VjcmV0")
        webhook = {"url": url + "?token=hunter2", "secret_file": str(secret)}
        boxes = [
            {"name": n, "host": "127.0.0.1", "port": 9, "security": "none", "username": "u", "password": "p",
             "handler": "webhook", "webhook": webhook, "timeout": 2}
            for n in ("a", "b")
        ]  # fmt: skip
        config = write_config(tmp_path / "c.yml", redis_url, *boxes)
        result = CliRunner().invoke(cli, ["check", "--json", "--config", str(config)])
    assert result.exit_code == 1
    webhook_lines = [r for r in json.loads(result.stdout) if r["name"].startswith("webhook ")]
    assert [r["name"].rsplit(": ", 1)[1] for r in webhook_lines] == ["dns", "tls", "unsigned"]
    assert webhook_lines[2]["outcome"] == "fail" and "does not check its token" in webhook_lines[2]["detail"]
    assert "hunter2" not in result.stdout and len(seen) == 1
