"""A local stand-in for the few Microsoft Graph v1.0 endpoints mailroom uses, for tests.

Graph cannot be reached from the test machines, so this serves the same shapes from memory. Where each
shape comes from (Microsoft Graph v1.0 documentation on learn.microsoft.com):

- ``GET /users/{user}/mailFolders/{folder}/messages/delta``: "message: delta"
  (graph/api/message-delta): a page is ``{"@odata.context", "value": [...], "@odata.nextLink"}`` or, on
  the last page, ``"@odata.deltaLink"``; removed items are ``{"id", "@removed": {"reason": "deleted"}}``;
  ``Prefer: odata.maxpagesize=N`` sets the page size and is echoed in ``Preference-Applied``.
  A delta link the service no longer knows answers 410 Gone with code ``SyncStateNotFound``
  ("Use delta query to track changes", graph/delta-query-overview).
- ``Prefer: IdType="ImmutableId"``: "Obtain immutable identifiers for Outlook resources"
  (graph/outlook-immutable-id); ids here look like Exchange's (base64 with ``-``, ``_`` and ``=``), and
  a move inside the mailbox keeps the id, as immutable ids do.
- ``GET /users/{user}/messages/{id}/$value``: the MIME stream ("Get MIME content of a message",
  graph/outlook-get-mime-message).
- ``PATCH /users/{user}/messages/{id}`` with ``{"isRead": true}`` answers 200 and the message
  (graph/api/message-update); ``POST .../move`` with ``{"destinationId"}`` answers 201 and the moved
  message (graph/api/message-move); ``DELETE`` answers 204 (graph/api/message-delete).
- Errors are ``{"error": {"code", "message"}}`` ("Microsoft Graph error responses", graph/errors):
  401 ``InvalidAuthenticationToken``, 404 ``ErrorItemNotFound``; throttling is 429 ``TooManyRequests``
  with ``Retry-After`` in seconds ("Microsoft Graph throttling guidance", graph/throttling).

Access tokens are checked with a callable (an ``OAuthServer``'s ``active``), so expiry and revocation
work as they do for IMAP.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.loopback import LoopbackHTTP


@dataclass
class Message:
    id: str
    folder: str
    mime: bytes
    received: str
    seq: int
    is_read: bool = False


@dataclass
class GraphServer(LoopbackHTTP):
    user: str
    token_ok: Callable[[str], object]
    messages: dict[str, Message] = field(default_factory=dict)
    removed: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (folder, seq)
    seq: int = 0
    throttle_next: int = 0  # this many requests get 429 before the next one is served
    retry_after: int = 1
    expired_below: int = 0  # delta tokens below this answer 410 SyncStateNotFound
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, query
    prefer_headers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self._listen(_handler(self))

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1.0"

    # -- the test's side -------------------------------------------------------------------------------

    def deliver(self, mime: bytes, folder: str = "inbox") -> str:
        with self.lock:
            self.seq += 1
            message_id = "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A" + secrets.token_urlsafe(24) + "AAA="
            received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.seq:06d}Z"
            self.messages[message_id] = Message(message_id, folder, mime, received, self.seq)
            return message_id

    def in_folder(self, folder: str = "inbox") -> list[Message]:
        with self.lock:
            return [m for m in self.messages.values() if m.folder == folder]

    def unread(self, folder: str = "inbox") -> list[Message]:
        return [m for m in self.in_folder(folder) if not m.is_read]

    def expire_delta_links(self) -> None:
        with self.lock:
            self.expired_below = self.seq + 1

    # -- delta -----------------------------------------------------------------------------------------

    def delta_page(self, folder: str, query: dict[str, str], page_size: int) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if "$skiptoken" in query:
                state = json.loads(base64.urlsafe_b64decode(query["$skiptoken"]))
                since, upto, offset = state["since"], state["upto"], state["offset"]
            else:
                since = int(query.get("$deltatoken", "0"))
                upto, offset = self.seq, 0
                if "$deltatoken" in query and since < self.expired_below:
                    return 410, _error(
                        "SyncStateNotFound",
                        "The sync state generation is not found. The delta token is expired and data must "
                        "be synchronized again.",
                    )
            items: list[tuple[int, dict[str, Any]]] = []
            for m in self.messages.values():
                if m.folder == folder and since < m.seq <= upto:
                    items.append((m.seq, self.resource(m)))
            if since:
                for message_id, (old_folder, seq) in self.removed.items():
                    if old_folder == folder and since < seq <= upto:
                        items.append((seq, _removed(message_id)))
            items.sort(key=lambda pair: pair[0])
            page = [item for _, item in items[offset : offset + page_size]]
            base = f"{self.base_url}/users/{quote(self.user, safe='@')}/mailFolders/{folder}/messages/delta"
            body: dict[str, Any] = {
                "@odata.context": f"{self.base_url}/$metadata#Collection(message)",
                "value": page,
            }
            if offset + page_size < len(items):
                state = {"since": since, "upto": upto, "offset": offset + page_size}
                token = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
                body["@odata.nextLink"] = f"{base}?$skiptoken={token}"
            else:
                body["@odata.deltaLink"] = f"{base}?$deltatoken={upto}"
            return 200, body

    def resource(self, m: Message) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.message",
            "@odata.etag": f'W/"CQAAABYAAAA{m.seq}"',
            "id": m.id,
            "isRead": m.is_read,
            "receivedDateTime": m.received,
            "internetMessageId": f"<graph-{m.seq}@example.com>",
        }

    def change(self, message_id: str, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            m = self.messages.get(message_id)
            if m is None:
                return 404, _error("ErrorItemNotFound", "The specified object was not found in the store.")
            self.seq += 1
            if action == "patch":
                m.is_read = bool(body.get("isRead", m.is_read))
                m.seq = self.seq
                return 200, self.resource(m)
            self.removed[message_id] = (m.folder, self.seq)
            if action == "delete":
                del self.messages[message_id]
                return 204, {}
            m.folder = str(body["destinationId"]).lower()
            m.seq = self.seq
            return 201, self.resource(m)


def _removed(message_id: str) -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.message", "id": message_id, "@removed": {"reason": "deleted"}}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _handler(server: GraphServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(
            self, status: int, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
        ) -> None:
            data = body if isinstance(body, bytes) else (json.dumps(body).encode() if status != 204 else b"")
            self.send_response(status)
            content_type = "text/plain" if isinstance(body, bytes) else "application/json"
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            server.requests.append((method, url.path, url.query))
            server.prefer_headers.append(self.headers.get("Prefer", ""))
            with server.lock:
                if server.throttle_next > 0:
                    server.throttle_next -= 1
                    self._send(
                        429,
                        _error("TooManyRequests", "Too many requests, retry later."),
                        {"Retry-After": str(server.retry_after)},
                    )
                    return
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or not server.token_ok(auth[7:]):
                self._send(
                    401, _error("InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
                )
                return
            parts = [unquote(p) for p in url.path.split("/") if p]
            # ['v1.0', 'users', USER, 'mailFolders', FOLDER, 'messages', 'delta'] or
            # ['v1.0', 'users', USER, 'messages', ID, ('$value' | 'move')?]
            if len(parts) < 3 or parts[:2] != ["v1.0", "users"] or parts[2].lower() != server.user.lower():
                self._send(404, _error("ErrorInvalidUser", "The requested user is invalid."))
                return
            rest = parts[3:]
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if (
                method == "GET"
                and len(rest) == 4
                and rest[0] == "mailFolders"
                and rest[2:] == ["messages", "delta"]
            ):
                page_size = 10
                for preference in self.headers.get("Prefer", "").split(","):
                    name, _, value = preference.strip().partition("=")
                    if name == "odata.maxpagesize":
                        page_size = int(value)
                status, body = server.delta_page(rest[1].lower(), query, page_size)
                self._send(status, body, {"Preference-Applied": f"odata.maxpagesize={page_size}"})
                return
            if len(rest) >= 2 and rest[0] == "messages":
                message_id = rest[1]
                if method == "GET" and rest[2:] == ["$value"]:
                    with server.lock:
                        m = server.messages.get(message_id)
                    if m is None:
                        self._send(
                            404,
                            _error("ErrorItemNotFound", "The specified object was not found in the store."),
                        )
                    else:
                        self._send(200, m.mime)
                    return
                body = json.loads(raw_body) if raw_body else {}
                if method == "PATCH" and len(rest) == 2:
                    self._send(*server.change(message_id, "patch", body))
                    return
                if method == "POST" and rest[2:] == ["move"]:
                    self._send(*server.change(message_id, "move", body))
                    return
                if method == "DELETE" and len(rest) == 2:
                    self._send(*server.change(message_id, "delete", body))
                    return
            self._send(400, _error("BadRequest", f"Unsupported request {method} {url.path}"))

        def do_GET(self) -> None:
            self._route("GET")

        def do_PATCH(self) -> None:
            self._route("PATCH")

        def do_POST(self) -> None:
            self._route("POST")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler
