"""How ``mailroom webhooks`` serves the receiver: uvicorn with the limits a public endpoint needs.

uvicorn has no timeout for a request's headers, and its ``limit_concurrency`` counts open connections:
210 clients that never finished their headers made every valid signed call get 503, and stayed open 40 s
and more. Here:

* a connection that has not sent a complete request header within :data:`HEADER_TIMEOUT` seconds of
  opening (or of its previous response) is closed (:class:`HeaderTimeoutProtocol`);
* the concurrency limit counts requests being answered, not connections (:class:`InFlightLimit`), so
  idle or slow connections never turn a valid call away;
* at most :data:`MAX_CONNECTIONS` connections are held; past that a new one is closed at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HEADER_TIMEOUT", "MAX_CONNECTIONS", "HeaderTimeoutProtocol", "InFlightLimit", "serve"]

HEADER_TIMEOUT = 10.0
MAX_CONNECTIONS = 4096
MAX_IN_FLIGHT = 200


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request header is not complete in time."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request on this connection gets the same time for its header

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class InFlightLimit:
    """ASGI middleware: at most ``limit`` HTTP requests answered at once; the next gets an empty 503."""

    def __init__(self, app: Any, limit: int = MAX_IN_FLIGHT) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def serve(app: Any, host: str, port: int, log_level: str) -> None:
    """Run ``app`` with uvicorn and the limits above, until SIGTERM or Ctrl-C."""
    import uvicorn

    uvicorn.run(
        InFlightLimit(app),
        host=host,
        port=port,
        http=HeaderTimeoutProtocol,
        proxy_headers=False,  # nothing depends on the client address; logs show the proxy's
        timeout_keep_alive=5,
        limit_concurrency=None,  # uvicorn's counts connections: InFlightLimit counts requests
        backlog=MAX_CONNECTIONS,
        h11_max_incomplete_event_size=16 * 1024,
        log_level=log_level,
    )
