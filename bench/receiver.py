"""A local webhook receiver for the worker benchmark: ``python -m bench.receiver --port P --delay D``.

An honest HTTP/1.1 keep-alive server on one asyncio loop: it reads each request's header block and its
whole ``Content-Length`` body, and answers ``200`` (empty body) ``--delay`` seconds later, so any
number of requests wait at once; requests pipelined on one connection are answered in order. A
``Connection: close`` request gets its answer and the connection closed; a chunked body (which no
webhook client here sends) a ``501`` and the connection closed.

It is an ``asyncio.Protocol`` rather than streams and a coroutine per connection: the benchmark runs
it on the same 2-core machine as the worker it measures, and the protocol costs a sixth less CPU per
request (0.05-0.07 ms instant, 0.13-0.17 ms with a 20 ms delay, which costs a timer and a loop turn;
python -m bench.webhook prints it). It prints ``listening`` once bound, and on SIGTERM one
line ``connections=N requests=M``: how many TCP connections the clients opened (a pooled client opens
about one per thread) and how many requests it answered.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import signal

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
NOT_IMPLEMENTED = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[^\r]*\bclose\b", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:", re.IGNORECASE)
MAX_HEAD = 64 * 1024

stats = {"connections": 0, "requests": 0}


class Receiver(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.body_left: int | None = None  # None: reading a header block
        self.close_after = False
        self.due: collections.deque[tuple[float, bytes]] = collections.deque()  # answers not yet sent
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        stats["connections"] += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            if self.body_left is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        self.transport.close()
                    return
                head = bytes(self.buffer[: end + 2])  # the last header line keeps its CRLF for the patterns
                del self.buffer[: end + 4]
                if _CHUNKED.search(head):
                    self.transport.write(NOT_IMPLEMENTED)
                    self.transport.close()
                    return
                length = _LENGTH.search(head)
                self.body_left = int(length.group(1)) if length else 0
                self.close_after = bool(_CLOSE.search(head))
            take = min(self.body_left, len(self.buffer))
            del self.buffer[:take]
            self.body_left -= take
            if self.body_left:
                return
            self.body_left = None
            stats["requests"] += 1
            self._answer(OK_CLOSE if self.close_after else OK)

    def _answer(self, response: bytes) -> None:
        assert self.transport is not None
        if not self.delay and not self.due:
            self._send(response)
            return
        loop = asyncio.get_running_loop()
        self.due.append((loop.time() + self.delay, response))
        if self.timer is None:
            self.timer = loop.call_at(self.due[0][0], self._send_due)

    def _send_due(self) -> None:
        self.timer = None
        _, response = self.due.popleft()
        self._send(response)
        if self.due and self.transport is not None and not self.transport.is_closing():
            self.timer = asyncio.get_running_loop().call_at(self.due[0][0], self._send_due)

    def _send(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        if response is not OK:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None


async def main(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiver(delay), "127.0.0.1", port, backlog=512)
    print("listening", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()
    print(" ".join(f"{k}={v}" for k, v in stats.items()), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.delay))
