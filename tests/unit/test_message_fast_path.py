"""The watcher splits well-formed header blocks itself instead of running the stdlib parser: the result
must be what the stdlib's compat32 parser gives, on every block the fast path accepts."""

from __future__ import annotations

from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailroom.message import _header_text, _split_simple_headers

SAMPLES = sorted((Path(__file__).parent.parent / "data").glob("*.eml"))


def _stdlib(block: bytes) -> list[tuple[str, str]]:
    message = BytesHeaderParser(policy=policy.compat32).parsebytes(block)
    return [(name, _header_text(value, [])) for name, value in message.raw_items()]


def _fast(block: bytes) -> list[tuple[str, str]] | None:
    split = _split_simple_headers(block)
    return None if split is None else [(name, _header_text(value, [])) for name, value in split]


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
    assert _fast(block)[1] == ("To", "incoming+k@example.com,\tb@y")


LINES = st.sampled_from(
    [
        "To: a@b",
        "Subject: hi",
        " continued",
        "\tcont",
        "X-Odd:",
        "Bad Header: x",
        "no colon",
        "From a@b",
        ": empty name",
        "Name:\xe9t\xe9",
        "Name:  spaced ",
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
