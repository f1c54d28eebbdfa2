"""What the parser property tests (test_parse_properties.py) do not reach: huge and broken base64 parts."""

from __future__ import annotations

import base64
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq.serializers import JSONSerializer

from bench import messages as bench_messages
from mailroom.config import MailboxKind
from mailroom.keys import AddressTemplate
from mailroom.message import _body_with_mailparser, _body_with_stdlib, mime_view, parse_body, parse_message
from mailroom.schema import JobPayload
from mailroom.source import SourceMessage
from tests.unit.test_parse_properties import check_body, check_parsed

TEMPLATE = AddressTemplate.parse("incoming+%{key}@example.com")


def _with_part(payload: bytes, encoding: bytes = b"base64") -> bytes:
    return (
        b"From: a@b.c\r\nTo: incoming+part@example.com\r\n"
        b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n'
        b"--z\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
        b'--z\r\nContent-Type: application/octet-stream; name="a.bin"\r\n'
        b'Content-Disposition: attachment; filename="a.bin"\r\n'
        b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n" + payload + b"\r\n--z--\r\n"
    )


@pytest.mark.timeout(60)
def test_huge_base64_part() -> None:
    data = os.urandom(8 * 1024 * 1024)
    raw = _with_part(base64.encodebytes(data).replace(b"\n", b"\r\n"))
    parsed = parse_message(raw, TEMPLATE)
    check_parsed(parsed)
    assert parsed.key == "part"
    body = parse_body(raw)
    check_body(body)
    print("attachments:", [(a.filename, a.size) for a in body.attachments], "parse_error:", body.parse_error)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.sampled_from([b"base64", b"quoted-printable", b"x-uuencode", b"bogus"]))
def test_broken_encoded_parts(payload: bytes, encoding: bytes) -> None:
    raw = _with_part(payload, encoding)
    check_parsed(parse_message(raw, TEMPLATE))
    check_body(parse_body(raw))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=2000)
    | st.lists(st.binary(max_size=120), max_size=12).map(
        lambda values: (
            b"".join(
                name + b": " + value + b"\r\n"
                for name, value in zip(
                    [b"Message-ID", b"Subject", b"From", b"To", b"References", b"X-Any"] * 2,
                    values,
                    strict=False,
                )
            )
            + b"\r\nbody"
        )
    )
)
def test_any_message_becomes_a_job_redis_and_rq_accept(raw: bytes) -> None:
    """What the watcher does with every message: payload, JSON, RQ's description. Nothing may raise (a
    raise there would offer the same message again for ever), and every text must be valid UTF-8."""
    message = SourceMessage(MailboxKind.IMAP, 7, raw, len(raw), datetime.now(UTC), epoch=1)
    payload = JobPayload.from_message("support", message, TEMPLATE)
    data = JSONSerializer.dumps(((payload.to_json(),), {}))
    assert JobPayload.from_json(JSONSerializer.loads(data)[0][0]).raw == raw
    for value in payload.to_json().values():
        if isinstance(value, str):
            value.encode("utf-8")  # redis-py encodes str strictly


@pytest.mark.parametrize(
    "subject", ["=?utf-7?Q?+2AA-?=", "=?unicode_escape?Q?\\ud800?=", "=?utf-7?B?K2RnQS0=?="]
)
def test_encoded_words_never_yield_text_redis_refuses(subject):
    """A lone surrogate in the subject made redis-py's encoder raise on every enqueue of the batch."""
    raw = f"From: a@b\r\nTo: incoming+k@example.com\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
    payload = JobPayload.from_message(
        "m",
        SourceMessage(MailboxKind.IMAP, 1, raw, len(raw), None, epoch=1),
        AddressTemplate.parse("incoming+%{key}@example.com"),
    )
    for value in (payload.subject, payload.from_address, payload.message_id, payload.parse_error):
        if value is not None:
            value.encode("utf-8")  # strict, as redis-py encodes
    assert payload.key == "k"


def _timed(call, *args):
    started = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - started


@pytest.mark.timeout(120)
def test_many_huge_address_headers_cost_about_what_their_bytes_do():
    """30 To/Cc headers of ~65 KB naming the key's domain took 3.2 s (getaddresses on each, 64 KiB apiece)
    against 5 ms for the same bytes without "@". Now getaddresses reads 32 KiB per message at most."""
    quoted = b'"Doe, Jane (%d)" <jane@example.com>, (a comment) x@example.com, ' * 1000
    hostile = b"".join(b"To: " + quoted[:65_000] + b"\r\n" for _ in range(30))
    plain = hostile.replace(b"@", b"_")
    tail = b"To: incoming+k@example.com\r\nSubject: s\r\n\r\nbody\r\n"
    parsed, hostile_s = _timed(parse_message, hostile + tail, TEMPLATE)
    _, plain_s = _timed(parse_message, plain + tail, TEMPLATE)
    print(f"hostile {hostile_s * 1000:.0f} ms, plain {plain_s * 1000:.0f} ms")
    assert parsed.key == "k" and "read roughly" in (parsed.parse_error or "")
    assert hostile_s < max(20 * plain_s, 0.5)


@pytest.mark.timeout(120)
def test_huge_encoded_word_subject_body_parse_is_linear():
    """A 1.4 MB Subject of encoded words took 13.3 s in parse_body (mail-parser decodes every header, in
    quadratic time); the MIME parsers now see the MIME fields of the top-level header only."""
    subject = b"Subject: " + b"=?utf-8?q?caf=C3=A9?= \r\n " * 60_000 + b"x\r\n"
    raw = subject + b"To: incoming+k@example.com\r\nContent-Type: text/plain\r\n\r\nthe text\r\n"
    body, seconds = _timed(parse_body, raw)
    print(f"parse_body: {seconds * 1000:.0f} ms for {len(raw)} bytes")
    assert body.text is not None and body.text.strip() == "the text"
    assert seconds < 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("depth", [5_000])
def test_deep_mime_nesting_is_cut(depth):
    deep = [b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth)]
    raw = b"To: incoming+k@example.com\r\n" + b"".join(deep) + b"Content-Type: text/plain\r\n\r\nin\r\n"
    body, seconds = _timed(parse_body, raw)
    print(f"parse_body: {seconds * 1000:.0f} ms; {body.parse_error}")
    assert "nested deeper than" in (body.parse_error or "")
    assert seconds < 5


def test_mime_view_keeps_what_the_body_needs():
    raw = (
        b"From: a@b\r\nSubject: =?utf-8?q?x?=\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative;\r\n boundary="z"\r\nX-Other: y\r\n\r\n'
        b"--z\r\nContent-Type: text/plain\r\nX-Part: kept\r\n\r\nhello\r\n--z--\r\n"
    )
    problems: list[str] = []
    view = mime_view(raw, problems)
    assert view.startswith(
        b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="z"\r\n\r\n'
    )
    assert view.endswith(b"X-Part: kept\r\n\r\nhello\r\n--z--\r\n") and not problems
    assert parse_body(raw).text == "hello\r\n" or parse_body(raw).text == "hello"


SAMPLES = sorted((Path(__file__).parent.parent / "data").glob("*.eml"))


@pytest.mark.parametrize(
    "raw",
    [p.read_bytes() for p in SAMPLES] + [bench_messages.message(i) for i in range(8)],
    ids=[p.name for p in SAMPLES] + [f"bench-{bench_messages.KINDS[i % 4]}-{i}" for i in range(8)],
)
def test_mime_view_leaves_ordinary_mail_as_it_was(raw):
    """The MIME parsers see only the MIME fields of the top-level header: on ordinary mail the text, HTML
    and attachments are what mail-parser (and the stdlib) read from the whole message."""
    problems: list[str] = []
    view = mime_view(raw, problems)
    assert not problems
    try:
        whole = _body_with_mailparser(raw)
    except Exception:
        assert _body_with_stdlib(view) == _body_with_stdlib(raw)
        return
    assert _body_with_mailparser(view) == whole
    assert _body_with_stdlib(view) == _body_with_stdlib(raw)


def test_an_oversized_message_keeps_the_parsers_reason_beside_the_cut():
    """The cut note used to replace parse_error, losing e.g. why the reply key was refused."""
    header = b"To: incoming+ab\x01cd@example.com\r\nSubject: s\r\n\r\n"
    message = SourceMessage(MailboxKind.IMAP, 1, header, 50_000_000, None, truncated=True, epoch=1)
    payload = JobPayload.from_message("m", message, TEMPLATE)
    assert payload.parse_error is not None
    assert "over max_message_size" in payload.parse_error
    assert "reply key in To refused" in payload.parse_error
