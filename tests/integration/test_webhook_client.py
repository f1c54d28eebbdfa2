"""The webhook handler's HTTP client against a real local server: connections reused, timeouts and
refused connections transient, the signed header cached per second."""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest

from mailroom.config import WebhookConfig
from mailroom.schema import JobPayload
from workers.errors import PermanentHandlerError, TransientHandlerError
from workers.handlers.webhook import JWT_HEADER, WebhookHandler
from workers.incoming import IncomingEmail

pytestmark = pytest.mark.integration

SECRET = b"0123456789abcdef0123456789abcdef"


class Server:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.peers: list[tuple[str, int]] = []
        self.tokens: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                server.peers.append(self.client_address)
                server.tokens.append(self.headers[JWT_HEADER])
                time.sleep(server.delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_port}/incoming"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def _email(n: int = 1) -> IncomingEmail:
    raw = f"Subject: {n}\r\n\r\nbody {n}\r\n".encode()
    payload = JobPayload(
        mailbox="support", source="imap", uidvalidity=1, uid=n, received_at="2026-11-25T00:00:00+00:00",
        size=len(raw), truncated=False, message_id=f"m{n}@test", key="k", key_header="To",
        from_address="a@example.com", subject="s", auto_reply=False, bounce=False, parse_error=None, raw=raw,
    )  # fmt: skip
    return IncomingEmail(payload)


def _handler(tmp_path: Path, url: str, timeout: float = 5.0) -> WebhookHandler:
    secret = tmp_path / "secret"
    secret.write_text(base64.b64encode(SECRET).decode() + "\n")
    return WebhookHandler(WebhookConfig(url=url, secret_file=secret, timeout=timeout))


def test_one_connection_is_reused_for_consecutive_messages(server, tmp_path):
    handler = _handler(tmp_path, server.url)
    for n in range(5):
        assert handler(_email(n)) == 200
    assert len(set(server.peers)) == 1, server.peers  # urllib opened a new connection per message
    for token in server.tokens:
        jwt.decode(token, SECRET, algorithms=["HS256"], issuer="gitlab-mailroom")


def test_concurrent_messages_share_the_pool(tmp_path):
    server = Server(delay=0.2)
    try:
        handler = _handler(tmp_path, server.url)
        threads = [threading.Thread(target=handler, args=(_email(n),)) for n in range(8)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert time.monotonic() - started < 8 * 0.2  # in flight together, not one after the other
        assert len(server.peers) == 8
    finally:
        server.close()


def test_a_server_slower_than_the_timeout_is_a_transient_failure(tmp_path):
    server = Server(delay=2.0)
    try:
        handler = _handler(tmp_path, server.url, timeout=0.3)
        with pytest.raises(TransientHandlerError, match="Timeout"):
            handler(_email())
    finally:
        server.close()


def test_a_refused_connection_is_a_transient_failure(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    handler = _handler(tmp_path, f"http://127.0.0.1:{port}/incoming")
    with pytest.raises(TransientHandlerError, match="ConnectError"):
        handler(_email())


def test_a_rotated_secret_takes_effect_within_a_second(server, tmp_path):
    handler = _handler(tmp_path, server.url)
    handler(_email(1))
    new_secret = b"fedcba9876543210fedcba9876543210"
    (tmp_path / "secret").write_text(base64.b64encode(new_secret).decode())
    time.sleep(1.1)
    handler(_email(2))
    jwt.decode(server.tokens[-1], new_secret, algorithms=["HS256"], issuer="gitlab-mailroom")


class _Answer(BaseHTTPRequestHandler):
    status = 500

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status", [500, 403, 302])
def test_a_token_in_the_url_never_reaches_the_error_text(tmp_path, status):
    """The error travels to logs, history, RQ's failed registry and Sentry: the URL is shown masked."""
    answer = type("Answer", (_Answer,), {"status": status})
    http = ThreadingHTTPServer(("127.0.0.1", 0), answer)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{http.server_port}/api/incoming?private_token=s3cret-token&x=1"
        with pytest.raises((TransientHandlerError, PermanentHandlerError)) as raised:
            _handler(tmp_path, url)(_email())
    finally:
        http.shutdown()
        http.server_close()
    assert "s3cret-token" not in str(raised.value)
    assert f"127.0.0.1:{http.server_port}/api/incoming" in str(raised.value)


def test_a_refused_connection_to_a_url_with_a_token_hides_it(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientHandlerError) as raised:
        _handler(tmp_path, f"http://127.0.0.1:{port}/incoming?token=s3cret-token")(_email())
    assert "s3cret-token" not in str(raised.value)


def test_no_request_is_logged_with_its_url(server, tmp_path, caplog):
    """httpx's client logs each request, URL and all, at INFO (the worker's level): a token in the
    query would reach the logs with every message. The handler's requests log nothing."""
    with caplog.at_level(logging.DEBUG):
        _handler(tmp_path, server.url + "?private_token=s3cret-token")(_email())
    assert "s3cret-token" not in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("httpx")]
