"""The watcher reads simple address headers without email.utils.getaddresses: that fast path must agree
with getaddresses on every input it accepts. The other shortcuts here are held to the code they replace."""

from __future__ import annotations

import re
import time
from email.utils import getaddresses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailroom.keys import (
    _SIMPLE_ADDRESS,
    _SIMPLE_LIST,
    KEY_HEADERS,
    REFERENCE_HEADERS,
    AddressBudget,
    AddressTemplate,
    ReplyKey,
    addresses,
    find_reply_key,
    find_reply_key_by_name,
    message_ids,
    received_for,
)

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


def _message_ids_before(value: str) -> list[str]:
    """message_ids as it was before it dropped empty ids in the same pass."""
    ids = [m.strip() for m in re.findall(r"<([^<>]*)>", value)]
    if not ids and "<" not in value:
        ids = re.split(r"[\s,]+", value)
    return [i for i in ids if i]


ID_ATOMS = st.sampled_from(["<", ">", "<>", "< >", "a@b", "reply-k@h", " ", ",", "\t", "x"])


@settings(max_examples=1000, deadline=None)
@given(st.lists(ID_ATOMS, max_size=10).map("".join))
def test_message_ids_as_before(value):
    assert message_ids(value) == _message_ids_before(value)


TEMPLATE = AddressTemplate.parse("incoming+%{key}@example.com")
NAMES = st.sampled_from(
    [*KEY_HEADERS, *REFERENCE_HEADERS, "to", "RECEIVED", "in-reply-to", " Cc ", "Subject", "X-To"]
)
VALUES = st.lists(
    st.sampled_from(
        ["incoming+k1@example.com", "<incoming+k2@Example.COM>", "for", " ", "<reply-k3@h>", "a@b", ","]
    ),
    max_size=4,
).map("".join)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=8))
def test_find_reply_key_by_name_is_find_reply_key(headers):
    """parse_message groups the headers itself (names have no spaces there) and calls
    find_reply_key_by_name; find_reply_key groups with strip().lower()."""
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.strip().lower(), []).append(value)
    assert find_reply_key_by_name(by_name, TEMPLATE) == find_reply_key(headers, TEMPLATE)
    if headers:
        assert find_reply_key(headers, TEMPLATE) == _find_reply_key_before(headers, TEMPLATE)


def _find_reply_key_before(headers: list[tuple[str, str]], template: AddressTemplate) -> ReplyKey | None:
    """find_reply_key as it was before the lowercase names were computed once."""
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.strip().lower(), []).append(value)
    for header in KEY_HEADERS:
        for value in by_name.get(header.lower(), ()):
            if template._domain not in value.lower():
                continue
            candidates = received_for(value) if header == "Received" else addresses(value)
            for candidate in candidates:
                key = template.key_from_address(candidate)
                if key:
                    return ReplyKey(key, header)
    for header in REFERENCE_HEADERS:
        for value in by_name.get(header.lower(), ()):
            for message_id in message_ids(value):
                match = re.fullmatch(r"reply-([^@]+)@[^@]+", message_id)
                if match:
                    return ReplyKey(match.group(1), header)
    return None


LIST_ATOMS = st.sampled_from(
    ["a@b", "incoming+k@example.com", "Jane <x@y>", " ", ",", ", ", "<", ">", '"', "(", ")", ":", ";", "J D"]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(LIST_ATOMS, max_size=16).map("".join))
def test_list_fast_path_agrees_with_getaddresses(value):
    """Lists of simple addresses (empty items too) are read without getaddresses: same answer."""
    assert addresses(value, require_at=False) == [addr for _, addr in getaddresses([value]) if addr]


def test_lists_reach_the_fast_path():
    assert _SIMPLE_LIST.fullmatch("a@b, Jane Doe <c@d>,, e@f, ")
    assert not _SIMPLE_LIST.fullmatch('"Doe, Jane" <a@b>, c@d')


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "value",
    [" " * 200_000 + "x", "a@b," + " " * 200_000 + "x", "a@b, " * 50_000 + "(", "a" + " " * 200_000 + "<"],
)
def test_fast_paths_are_linear(value):
    """Both patterns on the shapes that make a careless one backtrack quadratically (a run of spaces that
    two repeats could share): 200,000 characters take milliseconds, not minutes."""
    started = time.perf_counter()
    _SIMPLE_ADDRESS.fullmatch(value)
    _SIMPLE_LIST.fullmatch(value)
    assert time.perf_counter() - started < 5


def test_address_budget_is_shared_and_rough_past_it():
    budget = AddressBudget(100)
    quoted = '"Doe, Jane" <a@b>, (c) d@e'
    assert addresses(quoted, budget=budget) == ["a@b", "d@e"]
    assert budget.left == 100 - len(quoted) and not budget.rough
    big = '"x" <incoming+k@example.com>, ' * 10
    assert addresses(big, budget=budget) == ["incoming+k@example.com"] * 10  # read roughly
    assert budget.rough
