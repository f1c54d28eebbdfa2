"""An IMAP proxy for tests, in front of a real Dovecot: it passes every byte through except what a test
asks it to change, so a test can play a server Dovecot will not be configured as.

- ``hide``: capabilities to leave out (``UIDPLUS``, ``MOVE``) from CAPABILITY answers and response codes;
- ``no_custom_keywords``: ``\\*`` left out of PERMANENTFLAGS, and keywords (``$Foo``) dropped from STORE,
  as a server that cannot keep them would;
- ``refuse_fetch``: a ``UID FETCH`` whose set includes one of these UIDs is answered ``NO`` with the text
  given (Gmail's ``Some messages could not be FETCHed``), as a whole, without data;
- ``connections``: (opened, closed) monotonic times of each client connection, per login user.

Lines are read with their literals (``{n}`` at the end of a line announces n raw bytes), so a message body
never passes for a command or a response. The server is asked a harmless command in place of a refused
FETCH, so its answers stay in order with the pipelined commands around it.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO, Self

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_UID_FETCH = re.compile(rb"^(\S+) UID FETCH ([0-9:,*]+) ", re.IGNORECASE)
_STORE_KEYWORD = re.compile(rb" \$[A-Za-z0-9_]+")
_LOGIN = re.compile(rb"^\S+ LOGIN \"?([^\" ]+)", re.IGNORECASE)
_TAGGED = re.compile(rb"^(\S+) (OK|NO|BAD)\b", re.IGNORECASE)


def uid_set_includes(text: bytes, uid: int) -> bool:
    for part in text.split(b","):
        low, _, high = part.partition(b":")
        first = 1 << 32 if low == b"*" else int(low)
        last = first if not high else (1 << 32 if high == b"*" else int(high))
        if min(first, last) <= uid <= max(first, last):
            return True
    return False


@dataclass
class ImapProxy:
    upstream_host: str
    upstream_port: int
    hide: frozenset[bytes] = frozenset()
    no_custom_keywords: bool = False
    refuse_fetch: dict[int, bytes] = field(default_factory=dict)
    connections: list[tuple[str, float, float | None]] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)  # the FETCH commands answered NO
    commands: Counter[str] = field(default_factory=Counter)  # verbs seen ("UID FETCH", "IDLE" ...)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.host = "127.0.0.1"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def overlaps(self, user: str) -> int:
        """The most connections of ``user`` that were open at one moment."""
        events: list[tuple[float, int]] = []
        with self._lock:
            for name, opened, closed in self.connections:
                if name == user:
                    events += [(opened, 1), (closed if closed is not None else time.monotonic(), -1)]
        most = now = 0
        for _, step in sorted(events):
            now += step
            most = max(most, now)
        return most

    # -- plumbing ----------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection((self.upstream_host, self.upstream_port))
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = _Connection(self, client, server)
        up = threading.Thread(target=state.pump_commands, daemon=True)
        up.start()
        state.pump_responses()
        up.join(5)


class _Connection:
    def __init__(self, proxy: ImapProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client, self.server = client, server
        self.refused_tags: dict[bytes, bytes] = {}
        self.index: int | None = None
        self._write_lock = threading.Lock()

    def _record_login(self, user: str) -> None:
        with self.proxy._lock:
            self.index = len(self.proxy.connections)
            self.proxy.connections.append((user, time.monotonic(), None))

    def _record_close(self) -> None:
        with self.proxy._lock:
            if self.index is not None:
                user, opened, _ = self.proxy.connections[self.index]
                self.proxy.connections[self.index] = (user, opened, time.monotonic())

    def pump_commands(self) -> None:
        reader = self.client.makefile("rb")
        try:
            self._pump(reader, self.server, self._command)
        finally:
            _close(self.server)

    def pump_responses(self) -> None:
        reader = self.server.makefile("rb")
        try:
            self._pump(reader, self.client, self._response)
        finally:
            self._record_close()
            _close(self.client)

    @staticmethod
    def _pump(reader: BinaryIO, out: socket.socket, rewrite: Callable[[bytes], bytes]) -> None:
        try:
            while line := reader.readline():
                literal = _LITERAL.search(line)
                out.sendall(rewrite(line))
                if literal is not None:
                    remaining = int(literal.group(1))
                    while remaining:
                        chunk = reader.read(min(remaining, 65536))
                        if not chunk:
                            return
                        out.sendall(chunk)
                        remaining -= len(chunk)
        except OSError:
            return

    def _command(self, line: bytes) -> bytes:
        words = line.split(None, 3)
        if len(words) >= 2 and words[0] not in (b"DONE",):
            verb = words[1].upper()
            if verb == b"UID" and len(words) >= 3:
                verb += b" " + words[2].upper()
            with self.proxy._lock:
                self.proxy.commands[verb.decode("ascii", "replace")] += 1
        login = _LOGIN.match(line)
        if login is not None:
            self._record_login(login.group(1).decode())
        fetch = _UID_FETCH.match(line)
        if fetch is not None:
            for uid, words in self.proxy.refuse_fetch.items():
                if uid_set_includes(fetch.group(2), uid):
                    tag = fetch.group(1)
                    self.refused_tags[tag] = words
                    with self.proxy._lock:
                        self.proxy.refused.append(line.strip())
                    return tag + b' STATUS "mailroom-proxy-no-such-folder" (MESSAGES)\r\n'
        if self.proxy.no_custom_keywords and b" STORE " in line.upper():
            return _STORE_KEYWORD.sub(b"", line)
        return line

    def _response(self, line: bytes) -> bytes:
        tagged = _TAGGED.match(line)
        if tagged is not None and tagged.group(1) in self.refused_tags:
            return tagged.group(1) + b" NO " + self.refused_tags.pop(tagged.group(1)) + b"\r\n"
        upper = line.upper()
        if self.proxy.hide and b"CAPABILITY" in upper:
            for name in self.proxy.hide:
                line = re.sub(rb"(?i) " + re.escape(name) + rb"(?=[ \]\r])", b"", line)
        if self.proxy.no_custom_keywords and b"PERMANENTFLAGS" in upper:
            line = line.replace(b" \\*", b"").replace(b"(\\*", b"(")
        return line


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
