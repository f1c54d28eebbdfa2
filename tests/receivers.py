"""Stand-ins for the applications a webhook delivers to, each checking exactly what the real one checks.

* :class:`GitlabReceiver`: GitLab's ``POST /api/v4/internal/mail_room/:mailbox_type``
  (``Gitlab::MailRoom::Authenticator``): the JWT in ``Gitlab-Mailroom-Api-Request`` must verify with the
  mailbox's Base64 secret, HS256, issuer ``gitlab-mailroom``; else 401. An unknown mailbox type is 404.
  Success is 200 with ``{"success": true}``.
* :class:`ActionMailboxRelay`: Rails' ``ActionMailbox::Ingresses::Relay::InboundEmailsController``:
  HTTP basic auth, user ``actionmailbox`` and the ingress password, else 401; a ``Content-Type`` other
  than ``message/rfc822`` is 415; an empty body 422; success is 204 with the message stored as it came.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt

GITLAB_PATH = "/api/v4/internal/mail_room/"
RELAY_PATH = "/rails/action_mailbox/relay/inbound_emails"


@dataclass
class Received:
    """What a stand-in accepted and what it refused, with the status it answered."""

    accepted: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    refused: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    url: str = ""


Decide = Callable[[str, dict[str, str], bytes], tuple[int, bytes]]


@contextmanager
def _serve(decide: Decide, received: Received) -> Iterator[Received]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, answer = decide(self.path, headers, body)
            if 200 <= status < 300:
                received.accepted.append((self.path, headers, body))
            else:
                received.refused.append((status, headers))
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def gitlab_receiver(secrets: dict[str, bytes]) -> Iterator[Received]:
    """GitLab's internal mail_room API; ``secrets``: mailbox type -> the decoded shared secret."""

    def decide(path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if not path.startswith(GITLAB_PATH) or path[len(GITLAB_PATH) :] not in secrets:
            return 404, b'{"message":"404 Not Found"}'
        token = headers.get("gitlab-mailroom-api-request", "")
        try:
            jwt.decode(
                token,
                secrets[path[len(GITLAB_PATH) :]],
                algorithms=["HS256"],
                issuer="gitlab-mailroom",
                options={"require": ["iat", "iss"]},
                leeway=60,
            )
        except jwt.PyJWTError:
            return 401, b'{"message":"401 Unauthorized"}'
        return 200, json.dumps({"success": True}).encode()

    with _serve(decide, Received()) as received:
        yield received


@contextmanager
def action_mailbox_relay(ingress_password: str) -> Iterator[Received]:
    """Rails' relay ingress: basic auth actionmailbox:PASSWORD, Content-Type message/rfc822, 204."""
    expected = "Basic " + base64.b64encode(f"actionmailbox:{ingress_password}".encode()).decode()

    def decide(path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if path != RELAY_PATH:
            return 404, b""
        # Rails: authenticate_by_password runs first (401), then require_valid_rfc822_message (415).
        if headers.get("authorization") != expected:
            return 401, b"HTTP Basic: Access denied.\n"
        if headers.get("content-type", "").split(";")[0].strip().lower() != "message/rfc822":
            return 415, b""
        if not body:
            return 422, b""  # create: no body, unprocessable_entity
        return 204, b""

    with _serve(decide, Received()) as received:
        yield received
