"""The watcher splits well-formed header blocks itself instead of running the stdlib parser: the result
must be what the stdlib's compat32 parser gives, on every block the fast path accepts. The other shortcuts
of parse_message are held here to the slower code they replace."""

from __future__ import annotations

import base64
import re
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailroom import message
from mailroom.keys import AddressTemplate
from mailroom.message import _header_end, _header_text, _split_simple_headers, decode_words, parse_message

SAMPLES = sorted((Path(__file__).parent.parent / "data").glob("*.eml"))
TEMPLATE = AddressTemplate.parse("incoming+%{key}@example.com")


def _stdlib(block: bytes) -> tuple[list[tuple[str, str]], list[str]]:
    problems: list[str] = []
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(block)
    return [(name.lower(), _header_text(value, problems)) for name, value in parsed.raw_items()], problems


def _fast(block: bytes) -> tuple[list[tuple[str, str]], list[str]] | None:
    problems: list[str] = []
    split = _split_simple_headers(block, problems)
    return None if split is None else (split, problems)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_split_like_the_stdlib(path):
    raw = path.read_bytes()
    block = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    fast = _fast(block)
    if fast is not None:
        assert fast == _stdlib(block)


def test_the_usual_block_takes_the_fast_path():
    block = (
        b"From: A <a@x>\r\nTo: incoming+k@example.com,\r\n\tb@y\r\n"
        b"Subject: =?utf-8?q?h=C3=A9?=\r\nX-8bit: caf\xc3\xa9"
    )
    assert _fast(block) == _stdlib(block)
    assert _fast(block)[0][1] == ("to", "incoming+k@example.com,\tb@y")
    for plain in (b"From: a@b\r\nTo: c@d", b"From: a@b\nTo: c@d", b"From: a@b\r\nTo: c@d,\r\n e@f"):
        assert _fast(plain) == _stdlib(plain)


LINES = st.sampled_from(
    [
        "To: a@b",
        "Subject: hi",
        " continued",
        "\tcont",
        "  ",
        "X-Odd:",
        "Bad Header: x",
        "no colon",
        "From a@b",
        ": empty name",
        "Name:\xe9t\xe9",
        "Name: caf\xc3\xa9 ",
        " caf\xc3\xa9",
        "Name:  spaced ",
        "Name: ends in odd space\x0b\x1c",
        "Name:\x1c starts in odd space",
        "",
        "\r",
        "Received: from x\r",
        "A:b:c",
    ]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_fast_path_agrees_with_the_stdlib(lines, newline):
    block = newline.join(lines).encode("latin-1")
    fast = _fast(block)
    if fast is not None:
        assert fast == _stdlib(block)


LINE_BYTES = [b"To", b"x", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\n ", b"From "]
ODD_BYTES = [b"\xc3\xa9", b"\xe9", b"\x0b", b"\x1c"]  # 8-bit (UTF-8 and not), whitespace str.strip() knows
BLOCK_BYTES = st.sampled_from([*LINE_BYTES, *ODD_BYTES])


@settings(max_examples=1000, deadline=None)
@given(st.lists(BLOCK_BYTES, max_size=30).map(b"".join))
def test_fast_path_agrees_with_the_stdlib_on_any_block(block):
    fast = _fast(block)
    if fast is not None:
        assert fast == _stdlib(block)


def _header_end_by_regex(raw: bytes, limit: int) -> int:
    match = re.search(rb"\r?\n\r?\n", raw[:limit])
    return -1 if match is None else match.start()


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"x", b"\r\n", b"\n\r"]), max_size=40).map(b"".join),
    st.integers(min_value=0, max_value=45),
)
def test_header_end_is_the_regex_search(raw, limit):
    assert _header_end(raw, limit) == _header_end_by_regex(raw, limit)


def test_header_end_examples():
    examples = [b"a\r\n\r\nb", b"a\n\nb", b"a\r\n\nb", b"a\n\r\nb", b"\r\n\r\n", b"\n\n", b"a\r\r\n\r\nb"]
    for raw in [*examples, b"a\rb", b""]:
        for limit in range(len(raw) + 2):
            assert _header_end(raw, limit) == _header_end_by_regex(raw, limit), (raw, limit)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60), st.sampled_from(["utf-8", "UTF-8", "utf8", "latin-1", "utf-7", "utf-16"]))
@example(b"+2AA-", "utf-7")  # a lone surrogate
@example(b"\xed\xa0\x80", "utf-8")  # an encoded surrogate
def test_encoded_words_decode_as_before(data, charset):
    # What _decode_word did before it skipped the surrogate round trip for UTF-8.
    expected = data.decode(charset, "replace").encode("utf-8", "replace").decode("utf-8")
    word = f"=?{charset}?b?{base64.b64encode(data).decode()}?="
    assert decode_words(word, []) == expected


# Whole messages: the fast path against the stdlib parser, for everything parse_message returns.
NAMES = st.sampled_from(
    ["To", "to", "CC", "From", "Delivered-To", "Received", "References", "In-Reply-To", "Subject",
     "Message-ID", "Date", "Content-Type", "Precedence", "Auto-Submitted", "X-Other"]
)  # fmt: skip
VALUES = st.lists(
    st.sampled_from(
        [
            "incoming+k1@example.com",
            "Jane <incoming+k2@EXAMPLE.com>",
            "a@b.c",
            "<reply-k3@app>",
            "for",
            " ",
            ",",
            "\r\n ",
            "\n\t",
            "=?utf-8?q?J=C3=A9?=",
            "bulk",
            "multipart/report; report-type=delivery-status",
            "Tue, 14 May 2024 10:00:00 +0000",
            "caf\xc3\xa9",
            "\xe9",
        ]
    ),
    max_size=5,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(NAMES, VALUES), min_size=1, max_size=10),
    st.sampled_from(["\r\n", "\n"]),
    st.booleans(),
)
def test_parse_message_is_the_same_without_the_fast_path(headers, newline, recipients):
    block = newline.join(f"{name}: {value}" for name, value in headers)
    raw = (block + newline * 2 + "body").encode("latin-1")
    with mock.patch.object(message, "_split_simple_headers", return_value=None):
        expected = parse_message(raw, TEMPLATE, recipients=recipients)
    assert parse_message(raw, TEMPLATE, recipients=recipients) == expected


def test_parse_message_takes_the_fast_path_for_the_usual_message():
    raw = b"From: A <a@x.org>\r\nTo: incoming+k@example.com,\r\n\tb@y\r\nSubject: hi\r\n\r\nbody"
    assert _split_simple_headers(raw.split(b"\r\n\r\n")[0], []) is not None
    parsed = parse_message(raw, TEMPLATE)
    assert (parsed.key, parsed.from_address, parsed.to, parsed.subject, parsed.parse_error) == (
        "k",
        "a@x.org",
        ("incoming+k@example.com", "b@y"),
        "hi",
        None,
    )
