"""IDLE spoken straight on the socket: the watcher's wait, and its every-15-seconds renewal.

A quiet mailbox costs one IDLE renewal per ``keepalive_interval``; that round trip is what proves a
quiet connection alive, so it stays, and it is made as cheap as it can be (bench/many.py):

- the renewal is one write, ``DONE`` and the next ``<tag> IDLE`` together (RFC 3501 5.5: a client may
  send a command before the previous one has completed), and the IDLE stays running between calls;
  the old IDLE's tagged OK and the new one's continuation are read as they come;
- while an IDLE runs, :class:`Idle` owns the socket: it is non-blocking and read with ``recv`` into
  a buffer of its own, so a renewal is a send, a poll and one or two reads, with no socket mode
  switches, no poll before each send or read (what a socket with a timeout does), no imaplib line
  reader and no check of imaplib's buffer (a line that came with the continuation waits here).

What imaplib had buffered when the IDLE began is taken over, and what comes after the IDLE's tagged
OK (untagged responses only: no other command is outstanding) is read and judged here, so imaplib's
reader starts afresh afterwards. Tags come from imaplib's counter.

Errors are imaplib's and the socket's: a tagged NO or BAD raises ``imaplib.IMAP4.error``, ``* BYE``
and EOF ``imaplib.IMAP4.abort``, no answer in time ``TimeoutError``; the session translates them.
"""

from __future__ import annotations

import imaplib
import io
import math
import re
import select
import socket
import ssl
import time
from typing import cast

_LITERAL_AT_END = re.compile(rb"\{(\d+)\}$")
_ACTIVITY = frozenset({b"EXISTS", b"RECENT"})
_CHUNK = 65536
_MAX_LINE = 1_000_000  # imaplib's _MAXLINE
_WAIT_AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def announces_mail(line: bytes) -> bool:
    """``* 12 EXISTS`` or ``* 3 RECENT``: the mailbox has something new."""
    parts = line.split(None, 3)
    return len(parts) >= 3 and parts[0] == b"*" and parts[2].upper() in _ACTIVITY


class Idle:
    """One IDLE on ``imap``'s connection (renewed in place), from :meth:`begin` to :meth:`end`.

    The answers to our own commands are waited for on the socket alone; news (:meth:`next_line`) on
    the socket and a stop request's descriptor together.
    """

    def __init__(self, imap: imaplib.IMAP4, sock: socket.socket) -> None:
        self.imap = imap
        self.sock = sock
        self.tls = sock if isinstance(sock, ssl.SSLSocket) else None  # its pending() bytes are readable now
        self.buffer = b""
        self.tag = b""
        self._answer = select.poll()  # the socket alone: waiting for the server's answer
        self._answer.register(sock, select.POLLIN)
        self._news = self._answer  # the socket and ``wakeup``: waiting for news
        self.wakeup: int | None = None

    # -- the commands --------------------------------------------------------------------------------

    def begin(self, timeout: float) -> bool:
        """Send IDLE and read up to the continuation, the server answering within ``timeout`` s; True if
        a response before the continuation announced new mail. From here the socket is non-blocking."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.0)
        self.buffer = self._take_imaplibs_buffer()
        self.tag = self.imap._new_tag()
        self._send(self.tag + b" IDLE\r\n", deadline)
        return self._continued(deadline)

    def renew(self, timeout: float) -> bool:
        """End this IDLE and begin the next in one write; True if a response on the way announced new
        mail. The old IDLE's tagged OK and the new one's continuation must come within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        old, self.tag = self.tag, self.imap._new_tag()
        self._send(b"DONE\r\n" + self.tag + b" IDLE\r\n", deadline)
        self._receive(deadline, self._answer, timeout_raises=True)
        buffer = self.buffer  # often DONE's OK and the continuation together, and nothing else
        if buffer.startswith(old + b" OK "):
            continuation = buffer.find(b"\n") + 1
            after = buffer.find(b"\n", continuation) + 1 if buffer.startswith(b"+", continuation) else 0
            if after:
                self.buffer = buffer[after:]
                self.imap.tagged_commands.pop(old, None)
                return False
        announced = self._until_done(old, deadline)
        return self._continued(deadline) or announced

    def end(self, timeout: float, restore: float | None) -> bool:
        """Send DONE and read up to IDLE's tagged answer (within ``timeout`` s), then anything already
        received after it; True if a response on the way announced new mail. The socket gets timeout
        ``restore`` back, for imaplib."""
        deadline = time.monotonic() + timeout
        self._send(b"DONE\r\n", deadline)
        announced = self._until_done(self.tag, deadline)
        while self.buffer:  # unsolicited, after the tagged OK: judged here, imaplib starts afresh
            announced = self._judge(self._line(deadline)) or announced
        self.sock.settimeout(restore)
        return announced

    def next_line(self, timeout: float, wakeup: int | None = None) -> bytes | None:
        """The next line the server sends during the IDLE; None after ``timeout`` s or when ``wakeup``
        (a mailroom.stopping.StopEvent's descriptor) turns readable. A line that came with the
        continuation is here at once."""
        if wakeup != self.wakeup:
            self.wakeup, self._news = wakeup, select.poll()
            self._news.register(self.sock, select.POLLIN)
            if wakeup is not None:
                self._news.register(wakeup, select.POLLIN)
        if b"\n" not in self.buffer and not self._receive(time.monotonic() + timeout, self._news):
            return None
        return self._line(time.monotonic() + timeout)

    # -- reading and writing -------------------------------------------------------------------------

    def _continued(self, deadline: float) -> bool:
        announced = False
        while True:
            line = self._line(deadline)
            if line.startswith(b"+"):
                return announced
            if self._tagged(line, self.tag):
                raise imaplib.IMAP4.error("IDLE ended before it began")
            announced = self._judge(line) or announced

    def _until_done(self, tag: bytes, deadline: float) -> bool:
        announced = False
        while not self._tagged(line := self._line(deadline), tag):
            announced = self._judge(line) or announced
        return announced

    def _tagged(self, line: bytes, tag: bytes) -> bool:
        """True if ``line`` is ``tag``'s OK; NO or BAD raise."""
        if not line.startswith(tag + b" "):
            return False
        self.imap.tagged_commands.pop(tag, None)
        status = line[len(tag) + 1 :].split(None, 1)
        if not status or status[0].upper() != b"OK":
            raise imaplib.IMAP4.error(f"IDLE refused: {line[:200]!r}")
        return True

    def _judge(self, line: bytes) -> bool:
        if line.startswith(b"* BYE"):
            raise imaplib.IMAP4.abort(f"server said BYE: {line[:200]!r}")
        return announces_mail(line)

    def _line(self, deadline: float) -> bytes:
        """The next response line, without its CRLF; a literal it announces is read and skipped, with
        the rest of its response (nothing the watcher looks at comes in a literal)."""
        line = rest = self._raw_line(deadline)
        while match := _LITERAL_AT_END.search(rest):
            size = int(match.group(1))
            while len(self.buffer) < size:
                self._receive(deadline, self._answer, timeout_raises=True)
            self.buffer = self.buffer[size:]
            rest = self._raw_line(deadline)
        return line

    def _raw_line(self, deadline: float) -> bytes:
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > _MAX_LINE:
                raise imaplib.IMAP4.abort(f"got more than {_MAX_LINE} bytes without a line end")
            self._receive(deadline, self._answer, timeout_raises=True)
        line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
        return line[:-1] if line.endswith(b"\r") else line

    def _receive(self, deadline: float, poller: select.poll, timeout_raises: bool = False) -> bool:
        """Add what the server sent next to the buffer; False at ``deadline`` (or raise TimeoutError),
        or when ``poller`` reports the stop request."""
        while True:
            if not (self.tls and self.tls.pending()):
                wait = deadline - time.monotonic()
                ready = poller.poll(math.ceil(wait * 1000) if wait > 0 else 0)  # ms, rounded up
                if not ready or (len(ready) == 1 and ready[0][0] == self.wakeup):
                    if ready or not timeout_raises:
                        return False
                    if time.monotonic() >= deadline:
                        raise TimeoutError("the IMAP server did not answer in time during IDLE")
                    continue
            try:
                data = self.sock.recv(_CHUNK)
            except _WAIT_AGAIN:
                continue
            if not data:
                raise imaplib.IMAP4.abort("socket error: EOF")
            self.buffer += data
            return True

    def _send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
                continue
            except _WAIT_AGAIN:
                pass
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError("the IMAP connection took no data during IDLE")
            writable = select.poll()
            writable.register(self.sock, select.POLLOUT)
            writable.poll(math.ceil(wait * 1000))

    def _take_imaplibs_buffer(self) -> bytes:
        """What imaplib's reader had received and not yet handed out (normally nothing): its buffer,
        or if that is empty what one non-blocking read brings."""
        file = cast(io.BufferedReader, self.imap.file)
        try:
            pending = file.peek(1)
        except _WAIT_AGAIN:
            return b""
        return file.read(len(pending)) if pending else b""
