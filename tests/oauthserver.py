"""A local OAuth2 authorization server for tests: a token endpoint and a token-introspection endpoint.

- ``POST /token`` (RFC 6749 section 4.4 client credentials and section 6 refresh token): form-encoded
  ``grant_type``, ``client_id``, ``client_secret`` (or HTTP Basic), ``scope``, ``refresh_token``. Answers
  ``{"access_token", "token_type": "Bearer", "expires_in"}`` or, for a bad client, 401
  ``{"error": "invalid_client"}`` and for a bad refresh token 400 ``{"error": "invalid_grant"}``
  (RFC 6749 section 5.2).
- ``POST /introspect`` (RFC 7662): form field ``token``; answers ``{"active": "true", "username": ...}``
  for a live token. Dovecot 2.3.19 compares ``active_value`` as a string, hence the string ``"true"``
  (a JSON ``true`` is refused); a dead token gets ``{"active": "false"}``.

Tokens are random strings; the test controls who may have one, and can revoke or expire them.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote

from tests.loopback import LoopbackHTTP


@dataclass
class Issued:
    username: str
    expires_at: float
    revoked: bool = False


@dataclass
class OAuthServer(LoopbackHTTP):
    """Clients (id -> secret) get tokens for ``username``; refresh tokens map to the same user."""

    username: str
    clients: dict[str, str] = field(default_factory=lambda: {"mailroom": "s3cret"})
    refresh_tokens: set[str] = field(default_factory=lambda: {"refresh-1"})
    expires_in: int = 3600
    tokens: dict[str, Issued] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    introspections: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listen(_handler(self))

    @property
    def url(self) -> str:
        return f"{self.origin}"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    @property
    def introspection_url(self) -> str:
        return self.url + "/introspect"

    def issue(self, username: str | None = None, expires_in: int | None = None) -> str:
        token = "tok-" + secrets.token_urlsafe(16)
        lifetime = self.expires_in if expires_in is None else expires_in
        with self._lock:
            self.tokens[token] = Issued(username or self.username, time.time() + lifetime)
        return token

    def revoke_all(self) -> None:
        with self._lock:
            for issued in self.tokens.values():
                issued.revoked = True

    def active(self, token: str) -> Issued | None:
        with self._lock:
            issued = self.tokens.get(token)
        if issued is None or issued.revoked or issued.expires_at < time.time():
            return None
        return issued


def _handler(server: OAuthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if self.path == "/token":
                self._token(form)
            elif self.path == "/introspect":
                server.introspections += 1
                issued = server.active(form.get("token", ""))
                if issued is None:
                    self._answer(200, {"active": "false"})
                else:
                    self._answer(200, {"active": "true", "username": issued.username})
            else:
                self._answer(404, {"error": "not_found"})

        def _token(self, form: dict[str, str]) -> None:
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                client_id, client_secret = unquote(user), unquote(password)
            server.token_requests.append(
                {"grant_type": form.get("grant_type", ""), "client_id": client_id or ""}
            )
            if client_id not in server.clients or server.clients[client_id] != client_secret:
                self._answer(401, {"error": "invalid_client", "error_description": "client secret is wrong"})
                return
            grant = form.get("grant_type")
            if grant == "refresh_token" and form.get("refresh_token") not in server.refresh_tokens:
                self._answer(400, {"error": "invalid_grant", "error_description": "refresh token revoked"})
                return
            if grant not in ("client_credentials", "refresh_token"):
                self._answer(400, {"error": "unsupported_grant_type"})
                return
            token = server.issue()
            self._answer(
                200, {"access_token": token, "token_type": "Bearer", "expires_in": server.expires_in}
            )

    return Handler
