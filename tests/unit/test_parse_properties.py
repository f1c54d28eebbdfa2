"""Property tests: parse_message and parse_body never raise and always return the right types."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailroom.keys import AddressTemplate, find_reply_key
from mailroom.message import Attachment, MessageBody, ParsedMessage, parse_body, parse_message

DATA = Path(__file__).resolve().parent.parent / "data"
SAMPLES = [p.read_bytes() for p in sorted(DATA.glob("*.eml"))]
TEMPLATE = AddressTemplate.parse("incoming+%{key}@example.com")

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BODY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STRING_FIELDS = ("message_id", "from_address", "subject", "date", "in_reply_to", "key", "key_header")


def check_parsed(parsed: ParsedMessage) -> None:
    assert isinstance(parsed, ParsedMessage)
    for name in STRING_FIELDS:
        value = getattr(parsed, name)
        assert value is None or isinstance(value, str), name
    assert isinstance(parsed.to, tuple) and all(isinstance(a, str) for a in parsed.to)
    assert isinstance(parsed.cc, tuple) and all(isinstance(a, str) for a in parsed.cc)
    assert isinstance(parsed.auto_reply, bool) and isinstance(parsed.bounce, bool)
    assert parsed.parse_error is None or (
        isinstance(parsed.parse_error, str) and "\n" not in parsed.parse_error
    )
    assert (parsed.key is None) == (parsed.key_header is None)
    assert isinstance(parsed.as_dict(), dict)


def check_body(body: MessageBody) -> None:
    assert isinstance(body, MessageBody)
    assert body.text is None or isinstance(body.text, str)
    assert body.html is None or isinstance(body.html, str)
    assert isinstance(body.attachments, tuple)
    for attachment in body.attachments:
        assert isinstance(attachment, Attachment)
        assert isinstance(attachment.size, int) and attachment.size >= 0
    assert body.parse_error is None or isinstance(body.parse_error, str)


def check_both(raw: bytes) -> None:
    check_parsed(parse_message(raw, TEMPLATE))
    check_body(parse_body(raw))


header_name = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
    min_size=1,
    max_size=20,
) | st.sampled_from(["To", "Cc", "From", "Received", "References", "Subject", "Content-Type", "Date"])
header_value = st.binary(max_size=200) | st.text(max_size=200).map(
    lambda s: s.encode("utf-8", "surrogatepass")
)


@FAST
@given(st.binary(max_size=4000))
def test_arbitrary_bytes(raw: bytes) -> None:
    check_parsed(parse_message(raw, TEMPLATE))


@BODY
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_body(raw: bytes) -> None:
    check_body(parse_body(raw))


@FAST
@given(st.lists(st.tuples(header_name, header_value), max_size=30), st.binary(max_size=300))
def test_arbitrary_headers(headers: list[tuple[str, bytes]], body: bytes) -> None:
    raw = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body
    check_parsed(parse_message(raw, TEMPLATE))


@BODY
@given(st.sampled_from(SAMPLES), st.data())
def test_truncated_samples(sample: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(sample)))
    check_both(sample[:cut])


@BODY
@given(st.sampled_from(SAMPLES), st.data())
def test_nul_and_junk_bytes_in_samples(sample: bytes, data: st.DataObject) -> None:
    raw = bytearray(sample)
    for _ in range(data.draw(st.integers(min_value=1, max_value=20))):
        index = data.draw(st.integers(min_value=0, max_value=len(raw)))
        raw[index:index] = data.draw(st.sampled_from([b"\x00", b"\xff", b"\r", b"\n", b"=?", b"--", b":"]))
    check_both(bytes(raw))


@FAST
@given(st.text(max_size=30), st.sampled_from(["B", "Q", "b", "q"]), st.text(max_size=40))
def test_bad_charsets_in_encoded_words(charset: str, encoding: str, text: str) -> None:
    word = f"=?{charset}?{encoding}?{text}?="
    raw = (
        f"Subject: {word} {word}\r\nFrom: {word} <a@b.c>\r\n"
        f"Content-Type: text/plain; charset={charset}\r\n\r\nx"
    )
    check_both(raw.encode("utf-8", "surrogatepass"))


@BODY
@given(st.sampled_from(["base64", "rot13", "idna", "utf-7", "x-unknown", "unknown-8bit", "hex", "", "zlib"]))
def test_pathological_charset_names(charset: str) -> None:
    raw = (
        f"Subject: =?{charset}?B?aGVsbG8=?= =?{charset}?Q?h=FFi?=\r\n"
        f'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
        f"--b\r\nContent-Type: text/plain; charset={charset}\r\n\r\nh\xe9llo\r\n"
        f"--b\r\nContent-Type: text/html; charset={charset}\r\n\r\n<p>x</p>\r\n--b--\r\n"
    ).encode("latin-1")
    check_both(raw)


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["To", "Cc", "Delivered-To", "Received", "References", "In-Reply-To", "X-Other"]),
            st.text(max_size=120),
        ),
        max_size=20,
    )
)
def test_find_reply_key_never_raises(headers: list[tuple[str, str]]) -> None:
    result = find_reply_key(headers, TEMPLATE)
    assert result is None or (result.key and isinstance(result.header, str))


@FAST
@given(st.text(alphabet=st.characters(exclude_characters="@", exclude_categories=["Cs"]), min_size=1))
def test_fill_round_trips(key: str) -> None:
    key = "".join(key.split())
    if key:
        assert TEMPLATE.key_from_address(TEMPLATE.fill(key)) == key


# ---------------------------------------------------------------------------------------------------
# Sizes a generator would take too long to reach


@pytest.mark.timeout(10)
def test_ten_thousand_headers() -> None:
    headers = b"".join(b"X-Header-%d: value %d\r\n" % (i, i) for i in range(10_000))
    raw = headers + b"Delivered-To: incoming+late@example.com\r\n\r\nbody\r\n"
    parsed = parse_message(raw, TEMPLATE)
    check_parsed(parsed)
    assert (parsed.key, parsed.key_header) == ("late", "Delivered-To")
    check_body(parse_body(raw))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", ["Subject", "To", "References", "Received", "X-Junk"])
def test_one_megabyte_header_line(name: str) -> None:
    line = (b"=?utf-8?q?a" + b"x" * 20 + b"?=(<for ") * (1024 * 1024 // 36)
    raw = b"To: incoming+k@example.com\r\n" + name.encode() + b": " + line + b"\r\n\r\nbody\r\n"
    parsed = parse_message(raw, TEMPLATE)
    check_parsed(parsed)
    assert parsed.key == "k"
    check_body(parse_body(raw))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("depth", [50, 2000])
def test_deep_multipart_nesting(depth: int) -> None:
    parts = [b"From: a@b.c\r\nTo: incoming+deep@example.com\r\n"]
    for level in range(depth):
        parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (level, level))
    parts.append(b"Content-Type: text/plain\r\n\r\ninnermost\r\n")
    for level in reversed(range(depth)):
        parts.append(b"--b%d--\r\n" % level)
    raw = b"".join(parts)
    parsed = parse_message(raw, TEMPLATE)
    check_parsed(parsed)
    assert parsed.key == "deep"
    check_body(parse_body(raw))
