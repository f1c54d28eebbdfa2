"""Real servers on free loopback ports for the provider-side tests: the webhook app under uvicorn, an
SMTP server (aiosmtpd, STARTTLS with a trustme certificate, AUTH required) that records what it
receives, an authoritative DNS server (dnslib) serving a test zone over UDP and TCP, and an HTTP server
answering recorded JSON."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import trustme
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from dnslib.server import DNSLogger, DNSServer
from dnslib.zoneresolver import ZoneResolver

from devstack.ports import free_port
from tests.support import wait_for


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class SmtpRecorder:
    """What the SMTP server accepted, and the credentials it expects."""

    username: str = "mailer"
    password: str = "smtp-secret"
    received: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    failed_logins: int = 0

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), message))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.username
            and data.password.decode() == self.password
        )
        if not ok:
            self.failed_logins += 1
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@dataclass
class SmtpServer:
    host: str
    port: int
    ca_file: Path
    recorder: SmtpRecorder


@contextmanager
def smtp_server(tmp_path: Path) -> Iterator[SmtpServer]:
    """aiosmtpd with STARTTLS (trustme certificate for 127.0.0.1) required before AUTH, AUTH required."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    recorder = SmtpRecorder()
    port = free_port()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=recorder.authenticate,
    )
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, ca_file, recorder)
    finally:
        controller.stop()


class _Quiet(DNSLogger):
    def __init__(self) -> None:
        super().__init__(logf=lambda _: None)


@contextmanager
def dns_server(zone: str) -> Iterator[int]:
    """An authoritative server for ``zone`` (zone-file text) on 127.0.0.1, UDP and TCP; yields the port."""
    resolver = ZoneResolver(zone)
    for _ in range(5):
        port = free_port()
        try:
            udp = DNSServer(resolver, port=port, address="127.0.0.1", logger=_Quiet())
            tcp = DNSServer(resolver, port=port, address="127.0.0.1", tcp=True, logger=_Quiet())
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no free port for the DNS server")
    udp.start_thread()
    tcp.start_thread()
    try:
        yield port
    finally:
        udp.stop()
        tcp.stop()


@dataclass
class JsonServer:
    url: str
    requests: list[tuple[str, dict[str, str]]]


@contextmanager
def json_server(answers: dict[str, Any]) -> Iterator[JsonServer]:
    """HTTP on loopback: GET answers[path] (the path without the query) as JSON, 404 otherwise."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, dict(self.headers)))
            answer = answers.get(self.path.split("?", 1)[0])
            body = json.dumps(answer).encode() if answer is not None else b"{}"
            self.send_response(200 if answer is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield JsonServer(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


def rejecting_handler(email: Any) -> str:
    """A handler for the rejection tests: key "unknown" is an unknown conversation, "blocked" a sender
    the application does not allow; anything else is handled."""
    from workers.errors import RejectMessage

    if email.key == "unknown":
        raise RejectMessage("unknown_key")
    if email.key == "blocked":
        raise RejectMessage("sender_not_allowed", "Only project members can reply.")
    return "ok"
