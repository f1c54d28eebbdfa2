"""A small Microsoft Graph mail client: the only module that speaks HTTP to Graph.

Endpoints used (Microsoft Graph v1.0 documentation):
- delta of a folder's messages: ``GET /users/{user}/mailFolders/{folder}/messages/delta``, paged by
  ``@odata.nextLink`` until ``@odata.deltaLink`` (learn.microsoft.com/graph/api/message-delta,
  learn.microsoft.com/graph/delta-query-overview); an expired delta link answers 410 Gone (or 400) with
  ``syncStateNotFound`` / ``resyncRequired``, and the only remedy is a full resync;
- immutable ids: ``Prefer: IdType="ImmutableId"`` (learn.microsoft.com/graph/outlook-immutable-id);
- the message as MIME: ``GET /users/{user}/messages/{id}/$value``
  (learn.microsoft.com/graph/outlook-get-mime-message);
- mark read ``PATCH .../messages/{id}`` ``{"isRead": true}``, move ``POST .../messages/{id}/move``
  ``{"destinationId": ...}``, delete ``DELETE .../messages/{id}`` (message-update, message-move,
  message-delete);
- throttling: 429 (and 503/504) with ``Retry-After`` seconds (learn.microsoft.com/graph/throttling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import requests
import structlog

from mailroom.config import AfterDeliveryAction, GraphMailbox, MailboxKind
from mailroom.errors import GraphError, TokenError
from mailroom.oauth2 import TokenSource
from mailroom.source import SourceMessage

log = structlog.get_logger("mailroom.graph")

_THROTTLED = frozenset({429, 503, 504})
_RETRIED = _THROTTLED | {401}
_RESYNC_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid"})
_SELECT = "id,isRead,receivedDateTime,internetMessageId"
MAX_THROTTLE_RETRIES = 5
DEFAULT_RETRY_AFTER = 5.0
MAX_RETRY_AFTER = 300.0


class DeltaExpired(GraphError):
    """The delta link is no longer valid: start a full delta again."""


@dataclass(frozen=True)
class Changes:
    messages: list[dict[str, Any]]  # message resources still in the folder (not @removed)
    delta_link: str


class GraphClient:
    def __init__(
        self,
        config: GraphMailbox,
        tokens: TokenSource,
        wait: Callable[[float], bool],
        session: requests.Session | None = None,
    ) -> None:
        """``wait(seconds)`` sleeps unless asked to stop (then returns True): throttling waits use it."""
        self.config = config
        self.graph = config.graph
        self.tokens = tokens
        self.wait = wait
        self.http = session or requests.Session()
        self.user_url = f"{self.graph.base_url.rstrip('/')}/users/{quote(self.graph.user, safe='@')}"
        self.throttled = 0  # how many 429/503 answers were honoured (for logs and tests)

    def authenticate(self) -> None:
        """Get an access token (cached by the token source); raises GraphError when there is none."""
        self._token()

    # -- reading -------------------------------------------------------------------------------------

    def changes(self, delta_link: str | None) -> Changes:
        """Every page from ``delta_link`` (None: a full initial sync) to the next delta link."""
        folder = quote(self.config.folder, safe="")
        url = delta_link or f"{self.user_url}/mailFolders/{folder}/messages/delta?$select={_SELECT}"
        messages: dict[str, dict[str, Any]] = {}
        while True:
            if not url.startswith(self.graph.base_url.rstrip("/") + "/"):
                # Our bearer token goes with every request: never to a link pointing anywhere else (a
                # tampered delta link in Redis, a hostile page). A full resync starts from our own URL.
                raise DeltaExpired(f"link outside {self.graph.base_url} refused")
            page = self._request("GET", url, prefer=f"odata.maxpagesize={self.graph.page_size}").json()
            for item in page.get("value", []):
                if "@removed" in item:
                    messages.pop(item.get("id"), None)
                else:
                    messages[item["id"]] = item
            if "@odata.nextLink" in page:
                url = page["@odata.nextLink"]
            elif "@odata.deltaLink" in page:
                return Changes(list(messages.values()), page["@odata.deltaLink"])
            else:
                raise GraphError("delta page has neither @odata.nextLink nor @odata.deltaLink")

    def fetch(self, message: dict[str, Any], max_size: int) -> SourceMessage[str]:
        """The message as MIME; over ``max_size`` only its header is kept (``truncated``)."""
        message_id = message["id"]
        response = self._request("GET", f"{self._message_url(message_id)}/$value", stream=True)
        with response:
            buffer = bytearray()  # not bytes +=, which copies the whole message for every chunk
            for chunk in response.iter_content(64 * 1024):
                buffer += chunk
                if len(buffer) > max_size:
                    break
        raw = bytes(buffer)
        truncated = len(raw) > max_size
        size = len(raw)
        if truncated:
            head, sep, _ = raw.partition(b"\r\n\r\n")
            raw = head + sep if sep else raw[:max_size]
            size = int(response.headers.get("Content-Length") or size)
        received = _parse_time(message.get("receivedDateTime"))
        return SourceMessage(MailboxKind.GRAPH, message_id, raw, size, received, truncated)

    # -- marking -------------------------------------------------------------------------------------

    def mark_done(self, message_id: str) -> None:
        """Apply after_delivery; a message already gone (404) counts as done."""
        action, folder = self.config.after_delivery_action
        url = self._message_url(message_id)
        if action is AfterDeliveryAction.SEEN:
            self._request("PATCH", url, json={"isRead": True}, missing_ok=True)
        elif action is AfterDeliveryAction.MOVE:
            self._request("POST", f"{url}/move", json={"destinationId": folder}, missing_ok=True)
        else:
            self._request("DELETE", url, missing_ok=True)

    def is_pending(self, message: dict[str, Any]) -> bool:
        action, _ = self.config.after_delivery_action
        return action is not AfterDeliveryAction.SEEN or not message.get("isRead", False)

    # -- HTTP ----------------------------------------------------------------------------------------

    def _message_url(self, message_id: str) -> str:
        return f"{self.user_url}/messages/{quote(message_id, safe='')}"

    def _request(
        self,
        method: str,
        url: str,
        *,
        json: dict[str, Any] | None = None,
        prefer: str | None = None,
        stream: bool = False,
        missing_ok: bool = False,
    ) -> requests.Response:
        refreshed = False
        throttled = 0
        what = f"{method} {url.split('?')[0].removeprefix(self.graph.base_url)}"
        while True:
            headers = {
                "Authorization": f"Bearer {self._token()}",
                "Prefer": ", ".join(p for p in ('IdType="ImmutableId"', prefer) if p),
            }
            try:
                response = self.http.request(
                    method, url, headers=headers, json=json, stream=stream, timeout=self.config.timeout
                )
            except requests.RequestException as exc:
                raise GraphError(f"{what} failed: {type(exc).__name__}") from None
            status = response.status_code
            if status < 300 or (missing_ok and status == 404):
                return response
            code, message = _error(response)
            if status in _RETRIED:
                response.close()  # a streamed answer we will not read: give its connection back
            if status == 401 and not refreshed:
                self.tokens.invalidate()  # expired or revoked: one fresh token, then it is an error
                refreshed = True
                continue
            if status in _THROTTLED and throttled < MAX_THROTTLE_RETRIES:
                throttled += 1
                self.throttled += 1
                delay = _retry_after(response)
                log.warning("graph_throttled", mailbox=self.config.name, status=status, retry_in=delay)
                if self.wait(delay):
                    raise GraphError(f"{what}: stopped while throttled")
                continue
            if status == 410 or (status == 400 and code.lower() in _RESYNC_CODES):
                raise DeltaExpired(f"{what}: {status} {code}: {message}")
            raise GraphError(f"{what}: {status} {code}: {message}")

    def _token(self) -> str:
        try:
            return self.tokens.token()
        except TokenError as exc:
            raise GraphError(f"no OAuth2 token for Graph: {exc}") from exc


def _error(response: requests.Response) -> tuple[str, str]:
    """Graph's error body: ``{"error": {"code": ..., "message": ...}}`` (learn.microsoft.com/graph/errors)."""
    try:
        error = response.json().get("error", {})
        return str(error.get("code", "")), " ".join(str(error.get("message", "")).split())[:300]
    except (ValueError, AttributeError):
        return "", response.reason or ""


def _retry_after(response: requests.Response) -> float:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return DEFAULT_RETRY_AFTER


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
