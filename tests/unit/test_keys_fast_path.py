"""The watcher reads simple address headers without email.utils.getaddresses: that fast path must agree
with getaddresses on every input it accepts."""

from __future__ import annotations

from email.utils import getaddresses

from hypothesis import given, settings
from hypothesis import strategies as st

from mailroom.keys import _SIMPLE_ADDRESS, addresses

ATOMS = st.sampled_from(
    [
        "a",
        "Jane",
        "Doe",
        "incoming+k1",
        "example.com",
        "@",
        "<",
        ">",
        " ",
        '"',
        ",",
        "(",
        ")",
        ";",
        ":",
        ".",
        "=?utf-8?q?J=C3=A9?=",
        "\\",
        "[",
        "]",
        "\t",
        "x@y",
        "MAILER-DAEMON",
    ]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(ATOMS, max_size=12).map("".join))
def test_fast_path_agrees_with_getaddresses(value):
    # fast path or fallback, the answer is getaddresses' (hypothesis reaches both: see the samples)
    assert addresses(value, require_at=False) == [addr for _, addr in getaddresses([value]) if addr]


def test_the_samples_reach_the_fast_path():
    assert _SIMPLE_ADDRESS.fullmatch("Jane Doe <incoming+k1@example.com>")
    assert not _SIMPLE_ADDRESS.fullmatch('"Doe, Jane" <a@b>, c@d')
