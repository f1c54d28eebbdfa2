"""Raw message bytes -> parsed facts. Pure, no I/O, never raises.

Two entry points, two libraries, on purpose:

* :func:`parse_message` runs in the IMAP watcher for every message, so it reads the header block only
  (split at the first blank line, capped at :data:`MAX_HEADER_BYTES`) with the stdlib
  ``email.parser.BytesHeaderParser`` and the lenient ``compat32`` policy. ``policy.default`` builds rich
  header objects that can raise on hostile input when accessed and cost more; here the raw values are taken
  and decoded by this module (8-bit bytes as UTF-8 else Latin-1, RFC 2047 encoded words with a linear-time
  pattern, unknown charsets replaced instead of raised). A 25 MiB body is never looked at.
* :func:`parse_body` runs in workers that need the text, HTML and attachments. It uses mail-parser
  (``mailparser.parse_from_bytes``), which already handles the messy MIME of real mail (charsets, nested
  alternatives, inline parts); if mail-parser raises, it falls back to a stdlib ``compat32`` walk of the
  MIME tree. mail-parser has no type stubs, so its ``Any`` stops in :func:`_body_with_mailparser`.

Problems are data: :attr:`ParsedMessage.parse_error` and :attr:`MessageBody.parse_error` hold a one-line
description, and every field that could still be read is filled in.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import heapq
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import parsedate_to_datetime
from typing import Any, ParamSpec, TypeVar

from mailroom.keys import (
    ADDRESS_BUDGET_CHARS,
    KEY_HEADERS,
    REFERENCE_HEADERS,
    ROUGH_BUDGET_CHARS,
    AddressBudget,
    AddressTemplate,
    addresses,
    find_reply_key_by_name,
    message_ids,
)

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_MIME_DEPTH",
    "MAX_MIME_PARTS",
    "Attachment",
    "MessageBody",
    "ParsedMessage",
    "header_fields",
    "parse_body",
    "parse_message",
]

# Real header blocks are a few KiB; anything past this is hostile or broken and is not parsed.
MAX_HEADER_BYTES = 2 * 1024 * 1024
# email.utils.getaddresses is slow and recursive on hostile input (see keys.MAX_ADDRESS_HEADER_CHARS).
MAX_ADDRESS_CHARS = 64 * 1024
MAX_SUBJECT_CHARS = 16 * 1024
MAX_ERROR_CHARS = 500
# What one header-derived field (message_id, from, subject, in_reply_to) may hold: it is logged, stored in the
# job's description and the history, and shown by the CLI. The raw message keeps the whole value. Longer
# than any real one (RFC 5322 lines stop at 998 characters); the key has its own, refusing bound
# (keys.MAX_KEY_CHARS).
MAX_FIELD_CHARS = 998
# The stdlib header parser (for the unusual block: bare CR, a line that is not a header...) costs ~30 times
# the fast split per byte, so it reads at most this much of such a block; real header blocks are a few KiB.
MAX_SLOW_HEADER_BYTES = 64 * 1024

# The LF (CR) LF of a blank line. Its literal first byte lets the regex engine skip ahead to each LF, where
# r"\r?\n\r?\n" would be tried at every byte of the header block (see _header_end).
_BLANK_LINE = re.compile(rb"\n\r?\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_CONTINUATION = re.compile(r"\n[ \t]")
# A line break before a continuation line: r"\r?\n(?=[ \t])", spelled so the regex engine skips ahead to
# the next CR or LF instead of trying every position.
_FOLD = re.compile(r"\r\n(?=[ \t])|\n(?=[ \t])")
# The start of a header line: LF, an RFC 5322 ftext name as the stdlib's feedparser reads it, a colon.
# Linear: the name class excludes ":" and LF; the literal LF lets the engine skip from line to line.
_FIELD_START = re.compile(r"\n([\041-\071\073-\176]+):")
# Linear: every repeat is a character class that excludes the delimiter after it.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_REPORT_TYPE = re.compile(r"report-type\s*=\s*\"?([A-Za-z0-9._-]+)", re.IGNORECASE)

AUTO_PRECEDENCE = frozenset({"bulk", "junk", "auto_reply"})
DAEMON_SENDERS = frozenset({"mailer-daemon", "postmaster"})

# Lowercase names of the headers find_reply_key_by_name reads (To and Cc among them).
_REPLY_KEY_NAMES = frozenset(name.lower() for name in (*KEY_HEADERS, *REFERENCE_HEADERS))

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str | None  # without angle brackets
    from_address: str | None  # bare addr-spec of the first From
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str | None  # RFC 2047-decoded
    date: str | None  # ISO 8601 if parseable
    in_reply_to: str | None
    key: str | None
    key_header: str | None
    auto_reply: bool
    bounce: bool
    parse_error: str | None  # one line; None when clean

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; ``from_address`` is spelled ``from``."""
        return {
            "message_id": self.message_id,
            "from": self.from_address,
            "to": list(self.to),
            "cc": list(self.cc),
            "subject": self.subject,
            "date": self.date,
            "in_reply_to": self.in_reply_to,
            "key": self.key,
            "key_header": self.key_header,
            "auto_reply": self.auto_reply,
            "bounce": self.bounce,
            "parse_error": self.parse_error,
        }


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    content_type: str
    size: int  # decoded bytes


@dataclass(frozen=True)
class MessageBody:
    text: str | None
    html: str | None
    attachments: tuple[Attachment, ...]
    parse_error: str | None = None  # one line; None when mail-parser read the message cleanly


# --------------------------------------------------------------------------------------------------------
# Headers: the watcher's hot path


def parse_message(raw: bytes, template: AddressTemplate, *, recipients: bool = True) -> ParsedMessage:
    """Parse the header block of ``raw``. Never raises; problems go to ``parse_error``.

    ``recipients=False`` skips what the job payload does not carry (To, Cc, Date, In-Reply-To: they are
    left empty), for the watcher's hot path; the reply key is found either way.
    """
    problems: list[str] = []
    budget = AddressBudget()
    headers = _attempt(problems, [], _read_headers, raw, problems)
    first = dict(reversed(headers))  # name -> its first value
    every: dict[str, list[str]] = {}  # name -> all values in message order, for the reply key's headers
    for name, value in headers:
        if name in _REPLY_KEY_NAMES:
            every.setdefault(name, []).append(value)

    # Each step on its own: a failure goes to problems, the step's default is used, the rest still runs.
    reply_key = _attempt(problems, None, find_reply_key_by_name, every, template, budget, problems)
    from_address = _attempt(problems, None, _first_address, first.get("from", ""), budget)
    auto_reply, bounce = _attempt(problems, (False, False), _flags, first, from_address)
    message_id = _attempt(problems, None, _first_message_id, first.get("message-id", ""))
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    if recipients:
        to = _attempt(problems, (), _all_addresses, every.get("to", ()), budget)
        cc = _attempt(problems, (), _all_addresses, every.get("cc", ()), budget)
    subject = _attempt(problems, None, _subject, first.get("subject"), problems)
    date: str | None = None
    in_reply_to: str | None = None
    if recipients:
        date = _attempt(problems, None, _iso_date, first.get("date"))
        in_reply_to = _attempt(problems, None, _first_message_id, first.get("in-reply-to", ""))
    if budget.rough:
        problems.append(
            f"address headers past {ADDRESS_BUDGET_CHARS} characters of unusual syntax were read roughly"
            + (f", past {ROUGH_BUDGET_CHARS} not at all" if budget.skipped else "")
        )
    message_id = _capped(message_id, "Message-ID", problems)
    from_address = _capped(from_address, "From", problems)
    subject = _capped(subject, "Subject", problems)
    in_reply_to = _capped(in_reply_to, "In-Reply-To", problems)

    # Positional, in field order: keyword arguments would cost about a microsecond per message.
    return ParsedMessage(
        message_id,
        from_address,
        to,
        cc,
        subject,
        date,
        in_reply_to,
        reply_key.key if reply_key else None,
        reply_key.header if reply_key else None,
        auto_reply,
        bounce,
        _one_line(problems),
    )


def header_fields(raw: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of ``raw``'s header in message order, as :func:`parse_message` reads them:
    names lowercase, values unfolded and 8-bit decoded (not RFC 2047-decoded). Never raises."""
    problems: list[str] = []
    return _attempt(problems, [], _read_headers, raw, problems)


def _read_headers(raw: bytes, problems: list[str]) -> list[tuple[str, str]]:
    """(name, value) pairs in message order: names lowercase (they are case-insensitive), values unfolded,
    8-bit decoded, not RFC 2047-decoded."""
    if not raw:
        problems.append("empty message")
        return []
    end = _header_end(raw, MAX_HEADER_BYTES + 4)
    if end >= 0:
        block = raw[:end]
    else:
        block = raw[:MAX_HEADER_BYTES]
        if len(raw) > MAX_HEADER_BYTES:
            problems.append(f"header block larger than {MAX_HEADER_BYTES} bytes; the rest was not read")
        elif not raw.endswith(b"\n"):
            problems.append("no blank line after the headers and no final newline (truncated message?)")
    fast = _split_simple_headers(block, problems)
    if fast is not None:
        return fast
    if len(block) > MAX_SLOW_HEADER_BYTES:
        cut = block.rfind(b"\n", 0, MAX_SLOW_HEADER_BYTES)
        block = block[: cut if cut > 0 else MAX_SLOW_HEADER_BYTES]
        problems.append(f"unusual header block: only its first {MAX_SLOW_HEADER_BYTES} bytes were read")
    message = BytesHeaderParser(policy=policy.compat32).parsebytes(block)
    if message.defects:
        problems.append("header defects: " + ", ".join(sorted({type(d).__name__ for d in message.defects})))
    leftover = message.get_payload()
    if isinstance(leftover, str) and leftover.strip():
        # The parser stopped at a line that is not a header; everything after it is lost to us.
        problems.append("header block contains a line that is not a header; later headers ignored")
    return [(name.lower(), _header_text(value, problems)) for name, value in message.raw_items()]


def _header_end(raw: bytes, limit: int) -> int:
    """Where the first blank line wholly within ``raw[:limit]`` starts, or -1: the start of
    ``re.search(rb"\\r?\\n\\r?\\n", raw[:limit])``, without the copy and several times faster.

    The earliest LF (CR) LF is where that match has its first LF, so the match starts there or at the CR
    just before it.
    """
    match = _BLANK_LINE.search(raw, 0, limit)
    if match is None:
        return -1
    lf = match.start()
    return lf - 1 if raw[lf - 1 : lf] == b"\r" else lf


def _split_simple_headers(block: bytes, problems: list[str]) -> list[tuple[str, str]] | None:
    """The header block read as the compat32 parser and :func:`_header_text` would (names lowercase), for
    the usual well-formed block; None when anything is unusual (a line that is neither a header nor a
    continuation, a leading continuation, a Unix From line, a bare CR), which then goes to the stdlib parser
    and its defect reports. Several times faster; tests/unit/test_message_fast_path.py holds it to the
    stdlib's result.
    """
    if _BARE_CR.search(block):
        return None  # a bare CR ends a line for the stdlib
    text = block.decode("ascii", "surrogateescape")
    # ["", name, value, name, value, ...] when the first line is a header; a value runs up to the LF before
    # the next header line, so it takes its continuation lines along.
    parts = _FIELD_START.split("\n" + text)
    fields = zip(parts[1::2], parts[2::2], strict=True)
    # Every line is a header or a continuation exactly when the headers found are all the lines but the
    # continuations (a continuation on the first line counts as a line, and is no header).
    found, lines = len(parts) // 2, text.count("\n") + 1
    if found != lines and found != lines - len(_CONTINUATION.findall(text)):
        return None
    if not block.isascii():
        return [(name.lower(), _header_text(value, problems)) for name, value in fields]
    # What _header_text does, inline, for the usual ASCII block.
    if found == lines:  # no continuation lines
        return [(name.lower(), value.strip()) for name, value in fields]
    # Here every LF in a value starts a continuation line and every CR ends a line (no bare CR), so _FOLD's
    # unfolding is removing the line breaks; a CR at the end of a value goes with strip().
    return [
        (name.lower(), (value.replace("\r\n", "").replace("\n", "") if "\n" in value else value).strip())
        for name, value in fields
    ]


def _header_text(value: Any, problems: list[str]) -> str:
    """A raw header value: 8-bit decoded, unfolded, stripped."""
    text = str(value)
    if not text.isascii():
        # compat32 keeps 8-bit header bytes as surrogate escapes; RFC 6532 says UTF-8, old mailers Latin-1.
        data = text.encode("ascii", "surrogateescape")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            problems.append("8-bit header is not UTF-8, read as Latin-1")
            text = data.decode("latin-1")
    if "\n" in text:
        text = _FOLD.sub("", text)
    return text.strip()


def decode_words(value: str, problems: list[str]) -> str:
    """Decode RFC 2047 encoded words; whitespace between adjacent words is dropped, as the RFC says."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pos = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        if not (after_word and gap.isspace()):
            out.append(gap)
        out.append(_decode_word(match, problems))
        pos = match.end()
        after_word = True
    out.append(value[pos:])
    return "".join(out)


def _decode_word(match: re.Match[str], problems: list[str]) -> str:
    charset, encoding, encoded = match.groups()
    charset = charset.split("*", 1)[0]  # RFC 2231 language suffix: =?utf-8*en?...
    try:
        if encoding in "bB":
            # base64.b64decode without its Python-level wrapper: same result, same errors
            data = binascii.a2b_base64(encoded + "=" * (-len(encoded) % 4))
        else:
            data = binascii.a2b_qp(encoded.encode("utf-8"), header=True)
    except (binascii.Error, ValueError):
        problems.append(f"bad encoded word {match.group(0)[:60]!r}")
        return match.group(0)
    try:
        codec = codecs.lookup(charset)
        if not codec._is_text_encoding:
            raise LookupError(charset)  # base64, rot13, unicode_escape ...: not a charset
        text = data.decode(charset, "replace")
    except (LookupError, ValueError):
        problems.append(f"unknown charset {charset[:40]!r} in encoded word, read as UTF-8")
        return data.decode("utf-8", "replace")
    if codec.name == "utf-8":
        return text  # the UTF-8 decoder replaces encoded surrogates: nothing for the round trip below to do
    # UTF-7 and friends can produce lone surrogates, which no UTF-8 encoder (Redis, JSON users) accepts.
    return text.encode("utf-8", "replace").decode("utf-8")


def _subject(subject: str | None, problems: list[str]) -> str | None:
    if subject is None:
        return None
    if len(subject) > MAX_SUBJECT_CHARS:
        problems.append(f"Subject longer than {MAX_SUBJECT_CHARS} characters, truncated")
        subject = subject[:MAX_SUBJECT_CHARS]
    return decode_words(subject, problems)


def _capped(value: str | None, name: str, problems: list[str]) -> str | None:
    if value is None or len(value) <= MAX_FIELD_CHARS:
        return value
    problems.append(f"{name} longer than {MAX_FIELD_CHARS} characters, cut (the raw message has it whole)")
    return value[:MAX_FIELD_CHARS]


def _addresses(value: str, budget: AddressBudget) -> list[str]:
    return addresses(value[:MAX_ADDRESS_CHARS], require_at=False, budget=budget) if value else []


def _first_address(value: str, budget: AddressBudget) -> str | None:
    found = _addresses(value, budget)
    return found[0] if found else None


def _all_addresses(values: Iterable[str], budget: AddressBudget) -> tuple[str, ...]:
    found: list[str] = []
    for value in values:
        found.extend(_addresses(value, budget))
    return tuple(found)


def _first_message_id(value: str) -> str | None:
    found = message_ids(value)
    return found[0] if found else None


def _iso_date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).isoformat()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _flags(first: dict[str, str], from_address: str | None) -> tuple[bool, bool]:
    """(auto_reply, bounce) by the rules GitLab and Discourse use to refuse machine mail."""
    auto_submitted = first.get("auto-submitted")
    precedence = first.get("precedence", "").strip().lower()
    content_type = first.get("content-type", "")
    is_report = content_type.split(";", 1)[0].strip().lower() == "multipart/report"
    report_type = _REPORT_TYPE.search(content_type[:4096]) if is_report else None
    sender = (from_address or "").rpartition("@")
    sender_local = (sender[0] if sender[1] else sender[2]).lower()

    bounce = sender_local in DAEMON_SENDERS or bool(
        report_type and report_type.group(1).lower() == "delivery-status"
    )
    auto_reply = (
        bounce
        or (auto_submitted is not None and auto_submitted.split(";", 1)[0].strip().lower() != "no")
        or first.get("x-autoreply", "").strip().lower() == "yes"
        or "x-autorespond" in first
        or precedence in AUTO_PRECEDENCE
    )
    return auto_reply, bounce


# --------------------------------------------------------------------------------------------------------
# Bodies: workers


def parse_body(raw: bytes) -> MessageBody:
    """Text, HTML and attachment list of ``raw``. Never raises; linear in the size of ``raw``.

    The MIME parsers see :func:`mime_view` of the message: its MIME structure, bounded (see there).
    """
    problems: list[str] = []
    raw = mime_view(raw, problems)
    try:
        body = _body_with_mailparser(raw)
        return MessageBody(body.text, body.html, body.attachments, _one_line(problems))
    except Exception as exc:  # noqa: BLE001 - mail-parser raises anything on hostile MIME; the stdlib is next
        problems.append(f"mail-parser: {_describe(exc)}")
    try:
        body = _body_with_stdlib(raw)
    except Exception as exc:  # noqa: BLE001 - a parse failure is data, never an escaping exception
        return MessageBody(None, None, (), _one_line([*problems, f"stdlib: {_describe(exc)}"]))
    return MessageBody(body.text, body.html, body.attachments, _one_line(problems))


def mime_view(raw: bytes, problems: list[str]) -> bytes:
    """What the MIME parsers need of ``raw``, with bounded cost: text, HTML and attachments are the same.

    * The top-level header keeps only its MIME fields (``Content-*``, ``MIME-Version``): mail-parser decodes
      every top-level header, in quadratic time for RFC 2047 words (a 1.4 MB encoded Subject cost 13 s).
    * The message is cut (each cut goes to ``problems``) before a ``Content-*`` field longer than
      :data:`MAX_MIME_FIELD_CHARS` (a file name of encoded words is decoded in quadratic time), before the
      multipart that nests deeper than :data:`MAX_MIME_DEPTH` (the stdlib checks every line against every
      open boundary), and before part number :data:`MAX_MIME_PARTS` + 1.
    """
    end = _header_end(raw, len(raw))
    head, rest = (raw[:end], raw[end:]) if end >= 0 else (raw, b"")
    view = _mime_fields(head) + rest
    cut, why = _mime_cut(view)
    if cut < len(view):
        problems.append(f"MIME structure cut at byte {cut}: {why}")
        view = view[:cut]
    return view


MAX_MIME_FIELD_CHARS = 16 * 1024
MAX_MIME_DEPTH = 32
MAX_MIME_PARTS = 1000
_LINE_BREAK = re.compile(rb"(\r\n|\r|\n)")
_HEADER_NAME = re.compile(rb"([\041-\071\073-\176]*):")
_DELIMITER = re.compile(rb"\n--([^\r\n]*)")
_BOUNDARY = re.compile(rb'boundary\*?[0-9]*\*?[ \t\r\n]*=[ \t\r\n]*"?([^";\r\n]*)')
_CONTENT_FIELD = re.compile(rb"\ncontent-[^\n]*(?:\n[ \t][^\n]*)*")


def _mime_fields(head: bytes) -> bytes:
    """The header block without its non-MIME fields. A line that is neither a field nor a continuation
    ends the header for the parsers: it and what follows are kept as they are."""
    pieces = _LINE_BREAK.split(head)  # line, break, line, break, ..., line
    kept: list[bytes] = []
    keep = True
    for i in range(0, len(pieces), 2):
        line = pieces[i]
        brk = pieces[i + 1] if i + 1 < len(pieces) else b""
        if line[:1] in (b" ", b"\t"):
            pass  # a continuation: goes with its field
        elif line.startswith(b"From "):
            keep = not i  # an mbox envelope line: the parser skips it
        else:
            name = _HEADER_NAME.match(line)
            if name is None:
                return b"".join(kept) + b"".join(pieces[i:])
            lowered = name.group(1).lower()
            keep = lowered.startswith(b"content-") or lowered == b"mime-version"
        if keep:
            kept += (line, brk)
    return b"".join(kept)


def _mime_cut(view: bytes) -> tuple[int, str]:
    """Where the MIME parsers' input must end for bounded cost, and why (``len(view)``: nowhere)."""
    cut, why = len(view), ""
    lowered = view.lower()
    for field in _CONTENT_FIELD.finditer(lowered):
        if field.end() - field.start() > MAX_MIME_FIELD_CHARS:
            cut, why = field.start() + 1, f"a Content-* field longer than {MAX_MIME_FIELD_CHARS} characters"
            break
    # Boundary declarations and delimiter lines in order: a rough model of the parser's stack of open
    # multiparts, enough to see nesting and part counts (a declaration in a text body counts too).
    # Merged lazily: a flood of delimiter lines stops being read at the part limit.
    events = heapq.merge(
        ((m.start(), True, m.group(1).rstrip()) for m in _BOUNDARY.finditer(lowered, 0, cut)),
        ((m.start() + 1, False, m.group(1).rstrip()) for m in _DELIMITER.finditer(lowered, 0, cut)),
        key=lambda event: event[0],
    )
    stack: list[bytes] = []
    parts = 0
    for position, declared, name in events:
        if declared:
            stack.append(name)
            if len(stack) > MAX_MIME_DEPTH:
                line = lowered.rfind(b"\n", 0, position) + 1
                return line, f"multiparts nested deeper than {MAX_MIME_DEPTH}"
            continue
        closing = name.endswith(b"--") and name[:-2] in stack
        boundary = name[:-2] if closing else name
        if boundary not in stack:
            continue
        del stack[stack.index(boundary) + (0 if closing else 1) :]
        if not closing:
            parts += 1
            if parts > MAX_MIME_PARTS:
                return position, f"more than {MAX_MIME_PARTS} MIME parts"
    return cut, why


def _body_with_mailparser(raw: bytes) -> MessageBody:
    import mailparser  # here, not at the top: the watcher parses headers only and never needs it

    mail: Any = mailparser.parse_from_bytes(raw)
    attachments = tuple(
        Attachment(
            filename=str(item["filename"]) if item.get("filename") else None,
            content_type=str(item.get("mail_content_type") or "application/octet-stream"),
            size=_payload_size(item.get("payload"), bool(item.get("binary"))),
        )
        for item in mail.attachments
    )
    text = "\n".join(str(part) for part in mail.text_plain) or None
    html = "\n".join(str(part) for part in mail.text_html) or None
    return MessageBody(text, html, attachments)


def _payload_size(payload: Any, binary: bool) -> int:
    if payload is None:
        return 0
    if isinstance(payload, bytes):
        return len(payload)
    text = str(payload)
    if binary:
        try:
            return len(base64.b64decode(text))
        except (binascii.Error, ValueError):
            pass
    return len(text.encode("utf-8", "surrogateescape"))


def _body_with_stdlib(raw: bytes) -> MessageBody:
    root = BytesParser(policy=policy.compat32).parsebytes(raw)
    texts: list[str] = []
    htmls: list[str] = []
    attachments: list[Attachment] = []
    for part in _leaves(root):
        content_type = part.get_content_type()
        filename = part.get_filename()
        disposition = str(part.get("Content-Disposition", "")).split(";", 1)[0].strip().lower()
        data = part.get_payload(decode=True)
        payload = data if isinstance(data, bytes) else b""
        if filename or disposition == "attachment" or not content_type.startswith("text/"):
            attachments.append(Attachment(filename or None, content_type, len(payload)))
        elif content_type == "text/html":
            htmls.append(_decode_text(payload, part.get_content_charset()))
        else:
            texts.append(_decode_text(payload, part.get_content_charset()))
    return MessageBody("\n".join(texts) or None, "\n".join(htmls) or None, tuple(attachments))


def _leaves(root: Message) -> Iterator[Message]:
    """Non-multipart parts, depth first, without recursion (deeply nested MIME exists in the wild)."""
    stack = [root]
    while stack:
        part = stack.pop()
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            stack.extend(p for p in reversed(payload) if isinstance(p, Message))
        else:
            yield part


def _decode_text(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------------------
# Helpers


def _attempt(problems: list[str], default: T, step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one parsing step; a failure is recorded and the step's default used, so the rest still runs."""
    try:
        return step(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a parse failure is data, never an escaping exception
        problems.append(_describe(exc))
        return default


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _one_line(problems: list[str]) -> str | None:
    if not problems:
        return None
    unique = list(dict.fromkeys(problems))
    text = "; ".join(" ".join(p.split()) for p in unique)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
