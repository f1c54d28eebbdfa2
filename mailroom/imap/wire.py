"""UID FETCH responses read straight off the connection: the watcher's hot path.

imapclient turns a FETCH response into Python values with a general lexer written in Python, and
imaplib before it matches every line against several patterns: together about 190 µs of a 4 KB
message's 230 µs on loopback (Dovecot's own work included). This reader handles the two commands the
watcher repeats all day, ``UID FETCH <set> (BODY.PEEK[] INTERNALDATE)`` (in about 40 µs a message) and
``UID STORE <set> +FLAGS.SILENT (\\Seen)``, sent ahead of their answers (:class:`Pipeline`), and leaves
every other command to imapclient. tests/unit/test_imap_wire.py holds its results to imapclient's parser.

It reads through imaplib's public ``send``/``readline``/``read``, so it shares the connection's buffer
and TLS layer, takes its tag from imaplib's counter, and files the untagged responses that are not FETCH
data (EXISTS, RECENT, EXPUNGE ...) where imaplib would, so that the session still sees new mail
announced while it was fetching.
"""

from __future__ import annotations

import imaplib
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, TypeAlias

# A parsed value: an atom or number (bytes), a string or literal (bytes), a dropped body (Left), NIL
# (None), or a list of them.
Value: TypeAlias = "bytes | Left | list[Value] | None"

_LITERAL_AT_END = re.compile(rb"\{(\d+)\}$")
_UNTAGGED = re.compile(rb"\* (\d+) ([A-Za-z]+)(?: (.*))?$", re.DOTALL)
# One token: "(" ")" a quoted string, or an atom; an atom may carry a [section] (spaces and parentheses
# allowed inside) and a <partial> suffix, as in BODY[HEADER.FIELDS (FROM)]<0>.
_TOKEN = re.compile(
    rb' *(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^ ()"\[\]{}]+(?:\[[^\]]*\](?:<[0-9.]+>)?)?))', re.DOTALL
)
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)
# Dovecot's answer, and most servers': (UID n INTERNALDATE "..." BODY[] {size}, then ")" after the body.
_USUAL = re.compile(rb'\(UID (\d+) INTERNALDATE "([^"\\]*)" BODY\[\] \{(\d+)\}$', re.IGNORECASE)
_MONTHS = {
    m: i
    for i, m in enumerate(
        (b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC"), 1
    )
}
_LITERAL = object()  # stands for "the next literal" in a token stream
_DROP_CHUNK = 1024 * 1024  # a dropped body is read in pieces this large


class ProtocolError(imaplib.IMAP4.abort):
    """The server's answer is not IMAP as RFC 3501 writes it; the session cannot be trusted further."""


class Refused(imaplib.IMAP4.error):
    """The server answered the command NO or BAD (``text`` is its words); the session is still usable.
    Gmail: ``NO Some messages could not be FETCHed (Failure)``."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


class Bye(imaplib.IMAP4.abort):
    """The server said BYE while answering the command (``text`` is its words) and closes the session.
    Dovecot, for a message file it cannot read: ``BYE Internal error occurred``."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


@dataclass(frozen=True)
class Fetched:
    """One message's FETCH data: its UID, body bytes and INTERNALDATE (None if absent or unreadable)."""

    uid: int
    body: bytes
    internaldate: datetime | None


@dataclass(frozen=True)
class Left:
    """A body that was read off the wire and dropped, not kept: ``keep`` said no to its size."""

    size: int


@dataclass
class FetchResult:
    messages: list[Fetched]  # in the order the server sent them
    left: dict[int, int]  # UID -> size of each body dropped


def keep_all(size: int) -> bool:
    return True


@dataclass
class Command:
    """A command sent on the connection, and once its answer has been read, what that answer held."""

    tag: bytes
    name: str  # for error messages: "UID FETCH BODY.PEEK[]"
    keep: Callable[[int], bool]
    result: FetchResult | None = None


class Pipeline:
    """Commands sent on one connection whose answers are read later, in the order they were sent.

    RFC 3501 (5.5) lets a client send a command before the previous ones complete; the server answers
    in order. The watcher sends the next chunk's FETCH before it delivers the current chunk, and its
    STORE after, so Dovecot reads message files and renames them while Python parses and Redis
    writes, instead of each waiting for the other. Anything read on the way that is not FETCH data
    (EXISTS, EXPUNGE ...) is filed where imaplib files it.
    """

    def __init__(self, imap: imaplib.IMAP4) -> None:
        self.imap = imap
        self._unread: deque[Command] = deque()

    def fetch(self, uid_set: str, keep: Callable[[int], bool] = keep_all) -> Command:
        """Send ``UID FETCH uid_set (BODY.PEEK[] INTERNALDATE)``.

        ``keep(size)`` will be asked, in arrival order, about each body before it is read: a body it
        refuses is read in small pieces and dropped (listed in ``left`` with its size), so memory stays
        bounded by what the caller keeps, without asking the server for sizes first (for Dovecot, a
        second pass over every message file).
        """
        command = b"UID FETCH " + uid_set.encode("ascii") + b" (BODY.PEEK[] INTERNALDATE)"
        return self._send(command, "UID FETCH BODY.PEEK[]", keep)

    def add_flags(self, uid_set: str, flags: bytes) -> Command:
        """Send ``UID STORE uid_set +FLAGS.SILENT (flags)``."""
        command = b"UID STORE " + uid_set.encode("ascii") + b" +FLAGS.SILENT (" + flags + b")"
        return self._send(command, "UID STORE", keep_all)

    def wait(self, command: Command) -> FetchResult:
        """Read answers up to and including ``command``'s; what it fetched.

        Raises imaplib.IMAP4.error if a command was answered NO or BAD, imaplib.IMAP4.abort on BYE, EOF
        or anything unparseable (the caller drops the connection), OSError from the socket.
        """
        while command.result is None:
            self._read_next()
        return command.result

    def drain(self) -> None:
        """Read every answer still due: before a command that reads its own answer (imapclient's)."""
        while self._unread:
            self._read_next()

    def _send(self, command: bytes, name: str, keep: Callable[[int], bool]) -> Command:
        sent = Command(self.imap._new_tag(), name, keep)
        self._unread.append(sent)
        self.imap.send(sent.tag + b" " + command + b"\r\n")
        return sent

    def _read_next(self) -> None:
        command = self._unread[0]
        try:
            responses = read_responses(
                self.imap.readline, self.imap.read, command.tag, command.keep, command.name
            )
            command.result = collect_messages(responses, self.imap.untagged_responses)
        finally:
            self._unread.popleft()  # answered, or the connection is beyond use
            self.imap.tagged_commands.pop(command.tag, None)


def collect_messages(
    responses: Iterator[tuple[bytes, bytes, list[Value]]], untagged: dict[str, list[Any]]
) -> FetchResult:
    """The messages in ``responses``; other numbered responses are filed in ``untagged`` as imaplib
    files them (``{"EXISTS": [b"12"]}``). A server may split one message's data over several FETCH
    responses (RFC 3501 7.4.2), each with the UID (6.4.8): they are merged by UID. FETCH data without
    a UID is an unsolicited flag update, and ignored."""
    by_uid: dict[int, dict[bytes, Value]] = {}
    for number, kind, data in responses:
        if kind != b"FETCH":
            untagged.setdefault(kind.decode("ascii"), []).append(number)
            continue
        items = fetch_items(data)
        uid_text = items.get(b"UID")
        if not isinstance(uid_text, bytes):
            continue
        if not uid_text.isdigit():
            raise ProtocolError(f"UID is not a number: {uid_text[:40]!r}")
        by_uid.setdefault(int(uid_text), {}).update(items)
    result = FetchResult([], {})
    for uid, items in by_uid.items():
        body = items.get(b"BODY[]")
        if isinstance(body, Left):
            result.left[uid] = body.size
        elif isinstance(body, bytes):  # else no body: a flag update, or NIL for a message expunged meanwhile
            date = items.get(b"INTERNALDATE")
            internaldate = parse_internaldate(date) if isinstance(date, bytes) else None
            result.messages.append(Fetched(uid, body, internaldate))
    return result


def read_responses(
    readline: Callable[[], bytes],
    read: Callable[[int], bytes],
    tag: bytes,
    keep: Callable[[int], bool] = keep_all,
    name: str = "UID FETCH",
) -> Iterator[tuple[bytes, bytes, list[Value]]]:
    """(number, TYPE, data) for each numbered untagged response until the tagged one for ``tag``.

    FETCH data comes parsed into a flat list (name, value, name, value ...); other numbered responses
    (EXISTS, EXPUNGE ...) with an empty list. Untagged status responses (``* OK``, ``* NO`` as warnings)
    are skipped, ``* BYE`` raises imaplib.IMAP4.abort, and a tagged NO or BAD raises imaplib.IMAP4.error.
    """
    done = tag + b" "
    while True:
        line = _line(readline)
        if line.startswith(done):
            status = line[len(done) :].split(b" ", 1)[0].upper()
            if status == b"OK":
                return
            text = line.decode("utf-8", "replace")[:300]
            raise Refused(f"{name}: {text}", text[len(done) :])
        if not line.startswith(b"* "):
            raise ProtocolError(f"unexpected line during {name}: {line[:200]!r}")
        match = _UNTAGGED.match(line)
        if match is None:
            if line[2:5].upper() == b"BYE":
                text = line.decode("utf-8", "replace")[:300]
                raise Bye(f"server said BYE: {text}", text[2:])
            while (literal := _LITERAL_AT_END.search(line)) is not None:  # skip a status line's literals
                _exactly(read, int(literal.group(1)))
                line = _line(readline)
            continue
        number, kind = match.group(1), match.group(2).upper()
        if kind != b"FETCH":
            yield number, kind, []
            continue
        yield number, kind, _fetch_data(match.group(3) or b"", readline, read, keep)


def _line(readline: Callable[[], bytes]) -> bytes:
    """The next line without its CRLF."""
    line = readline()
    if not line:
        raise imaplib.IMAP4.abort("connection closed by the server during FETCH")
    if not line.endswith(b"\n"):
        raise ProtocolError(f"line cut short during FETCH: {line[:200]!r}")
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]


def _exactly(read: Callable[[int], bytes], size: int) -> bytes:
    data = read(size)
    if len(data) != size:
        raise imaplib.IMAP4.abort(f"connection closed inside a {size}-byte literal")
    return data


def _fetch_data(
    first: bytes, readline: Callable[[], bytes], read: Callable[[int], bytes], keep: Callable[[int], bool]
) -> list[Value]:
    """The parenthesised FETCH data that starts with ``first`` (the rest of the ``* n FETCH`` line),
    reading the literals and continuation lines it announces; a BODY[] literal ``keep`` refuses is
    dropped as it is read and stands as :class:`Left`."""
    tokens: list[object] = []
    line = first
    usual = _USUAL.match(first)
    if usual is not None:  # one regex instead of the tokenizer, for the shape servers nearly always send
        uid, date, size = usual.group(1), usual.group(2), int(usual.group(3))
        body = _exactly(read, size) if keep(size) else _drop(read, size)
        line = _line(readline)
        if line == b")":
            return [b"UID", uid, b"INTERNALDATE", date, b"BODY[]", body]
        tokens += (b"(", b"UID", uid, b"INTERNALDATE", _LITERAL, date, b"BODY[]", _LITERAL, body)
    while True:
        literal = _LITERAL_AT_END.search(line)
        if literal is None:
            _tokenize(line, tokens)
            break
        _tokenize(line[: literal.start()], tokens)
        size = int(literal.group(1))
        tokens.append(_LITERAL)
        if tokens[-2:-1] == [b"BODY[]"] and not keep(size):
            tokens.append(_drop(read, size))
        else:
            tokens.append(_exactly(read, size))
        line = _line(readline)
    value, end = _parse(tokens, 0)
    if end != len(tokens) or not isinstance(value, list):
        raise ProtocolError("FETCH data is not one parenthesised list")
    return value


def _drop(read: Callable[[int], bytes], size: int) -> Left:
    remaining = size
    while remaining > 0:
        remaining -= len(_exactly(read, min(remaining, _DROP_CHUNK)))
    return Left(size)


def _tokenize(text: bytes, out: list[object]) -> None:
    pos, end = 0, len(text)
    while pos < end:
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos:].strip(b" ") == b"":
                return
            raise ProtocolError(f"cannot read FETCH data at {text[pos : pos + 60]!r}")
        opened, closed, quoted, atom = match.groups()
        if opened:
            out.append(b"(")
        elif closed:
            out.append(b")")
        elif quoted is not None:
            out.append(_LITERAL)
            out.append(_QUOTED_PAIR.sub(rb"\1", quoted) if b"\\" in quoted else quoted)
        else:
            out.append(atom)
        pos = match.end()


def _parse(tokens: list[object], i: int) -> tuple[Value, int]:
    """One value from ``tokens[i:]``: a list for "(", a string after the _LITERAL marker, else an atom."""
    token = tokens[i]
    if token is _LITERAL:
        return tokens[i + 1], i + 2  # type: ignore[return-value]
    if token == b"(":
        items: list[Value] = []
        i += 1
        while i < len(tokens) and tokens[i] != b")":
            item, i = _parse(tokens, i)
            items.append(item)
        if i >= len(tokens):
            raise ProtocolError("unbalanced parentheses in FETCH data")
        return items, i + 1
    if token == b")":
        raise ProtocolError("unbalanced parentheses in FETCH data")
    assert isinstance(token, bytes)
    return (None if token.upper() == b"NIL" else token), i + 1


def fetch_items(data: list[Value]) -> dict[bytes, Value]:
    """FETCH data as {NAME: value}, names upper-cased (``BODY[]``, ``UID``, ``INTERNALDATE`` ...)."""
    if len(data) % 2:
        raise ProtocolError("FETCH data has a name without a value")
    items: dict[bytes, Value] = {}
    for k in range(0, len(data), 2):
        name = data[k]
        if not isinstance(name, bytes):
            raise ProtocolError("FETCH data item name is not an atom")
        items[name.upper()] = data[k + 1]
    return items


@lru_cache(maxsize=256)  # a backlog's messages share their arrival seconds
def parse_internaldate(text: bytes) -> datetime | None:
    """``25-Nov-2026 15:03:53 +0000`` (day may be space-padded) as an aware datetime; None if malformed."""
    try:
        day_month_year, clock, zone = text.split()
        day, month, year = day_month_year.split(b"-")
        hour, minute, second = clock.split(b":")
        sign = -1 if zone[:1] == b"-" else 1
        if len(zone) != 5 or zone[:1] not in b"+-" or not zone[1:].isdigit():
            return None
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
        return datetime(
            int(year),
            _MONTHS[month.upper()],
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone(sign * offset),
        )
    except (ValueError, KeyError):
        return None
