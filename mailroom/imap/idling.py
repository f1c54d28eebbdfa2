"""IDLE begun and ended straight on the connection: the watcher's every-15-seconds round trip.

A quiet mailbox costs one IDLE renewal (DONE, its answer, IDLE, the continuation) per
``keepalive_interval``; that round trip is what proves a quiet connection alive, so it stays. Through
imapclient and imaplib's command machinery it took about 350 µs of CPU, most of an idle replica's cost
(bench/many.py); read and written here through imaplib's own ``send`` and line reader (sharing its
buffer, TLS layer and tag counter, as mailroom.imap.wire does) it takes under 100 µs.

Errors are imaplib's: a tagged NO or BAD raises ``imaplib.IMAP4.error``, ``* BYE`` and EOF
``imaplib.IMAP4.abort``, the socket's own ``OSError`` (a timeout too); the session translates them.
"""

from __future__ import annotations

import imaplib
import re

_LITERAL_AT_END = re.compile(rb"\{(\d+)\}$")
_ACTIVITY = frozenset({b"EXISTS", b"RECENT"})


def read_line(imap: imaplib.IMAP4) -> bytes:
    """The next response line, without its CRLF; a literal it announces is read and skipped, with the
    rest of its response (nothing the watcher looks at comes in a literal)."""
    line: bytes = imap._get_line()
    rest = line
    while match := _LITERAL_AT_END.search(rest):
        imap.read(int(match.group(1)))
        rest = imap._get_line()
    return line


def announces_mail(line: bytes) -> bool:
    """``* 12 EXISTS`` or ``* 3 RECENT``: the mailbox has something new."""
    parts = line.split(None, 3)
    return len(parts) >= 3 and parts[0] == b"*" and parts[2].upper() in _ACTIVITY


def begin(imap: imaplib.IMAP4) -> tuple[bytes, bool]:
    """Send IDLE and read up to the server's continuation; (the command's tag, whether a response
    before the continuation announced new mail)."""
    tag: bytes = imap._new_tag()
    imap.send(tag + b" IDLE\r\n")
    announced = False
    while True:
        line = _untagged_or_end(imap, tag, "IDLE")
        if line is None:
            raise imaplib.IMAP4.error("IDLE ended before it began")
        if line.startswith(b"+"):
            return tag, announced
        announced = announced or announces_mail(line)


def end(imap: imaplib.IMAP4, tag: bytes) -> bool:
    """Send DONE and read up to IDLE's tagged answer; True if a response on the way announced new mail."""
    imap.send(b"DONE\r\n")
    announced = False
    while (line := _untagged_or_end(imap, tag, "IDLE")) is not None:
        announced = announced or announces_mail(line)
    return announced


def _untagged_or_end(imap: imaplib.IMAP4, tag: bytes, name: str) -> bytes | None:
    """The next line; None once it is ``tag``'s OK (NO or BAD raise)."""
    line = read_line(imap)
    if line.startswith(b"* BYE"):
        raise imaplib.IMAP4.abort(f"server said BYE: {line[:200]!r}")
    if line.startswith(tag + b" "):
        imap.tagged_commands.pop(tag, None)
        status = line[len(tag) + 1 :].split(None, 1)
        if not status or status[0].upper() != b"OK":
            raise imaplib.IMAP4.error(f"{name} refused: {line[:200]!r}")
        return None
    return line
