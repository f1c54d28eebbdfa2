"""Reply keys by GitLab's rules: template matching, header order, References fallback, linear time."""

from __future__ import annotations

import pytest

from mailroom.keys import (
    KEY_HEADERS,
    REFERENCE_HEADERS,
    AddressTemplate,
    ReplyKey,
    find_reply_key,
    find_reply_key_by_name,
    key_problem,
    reply_message_id,
)

TEMPLATE = AddressTemplate.parse("incoming+%{key}@example.com")


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("incoming+abc@example.com", "abc"),
        ("incoming+abc@EXAMPLE.com", "abc"),  # domain: case-insensitive
        ("<incoming+abc@example.com>", "abc"),
        ("incoming+a.b+c-d_e/f=g@example.com", "a.b+c-d_e/f=g"),
        ("Incoming+abc@example.com", None),  # local part: case-sensitive
        ("incoming+abc@example.org", None),
        ("incoming+abc@sub.example.com", None),
        ("incoming+@example.com", None),  # empty key
        ("incoming+abc@example.com.evil.net", None),
        ("xincoming+abc@example.com", None),  # anchored at the start
        ("incoming+a@b@example.com", None),  # key never contains @
        ("abc@example.com", None),
        ("", None),
        ("not an address", None),
    ],
)
def test_key_from_address(address: str, key: str | None) -> None:
    assert TEMPLATE.key_from_address(address) == key


def test_template_is_literal_not_regex() -> None:
    template = AddressTemplate.parse("in.coming+%{key}@mail.example.com")
    assert template.key_from_address("in.coming+k@mail.example.com") == "k"
    assert template.key_from_address("inXcoming+k@mail.example.com") is None  # "." is not "any char"
    assert template.key_from_address("in.coming+k@mailXexample.com") is None
    assert template.key_from_address("in.cominggg+k@mail.example.com") is None  # "+" is not "one or more"
    assert AddressTemplate.parse("a(b)[c]*%{key}$@x.io").key_from_address("a(b)[c]*K$@x.io") == "K"


def test_template_with_suffix_and_fill() -> None:
    template = AddressTemplate.parse(" reply-%{key}-in@example.com ")
    assert template.template == "reply-%{key}-in@example.com"
    assert template.key_from_address("reply-abc-in@example.com") == "abc"
    assert template.key_from_address("reply-a-b-in@example.com") == "a-b"
    assert template.key_from_address("reply-abc@example.com") is None
    assert template.fill("xyz") == "reply-xyz-in@example.com"
    assert template.key_from_address(template.fill("round.trip+1")) == "round.trip+1"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("incoming+%{key}+%{key}@example.com", "at most once"),
        ("incoming+%{key}", "local-part@domain"),
        ("incoming+%{key}@", "local-part@domain"),
        ("incoming@%{key}.example.com", "local part"),
        ("in coming+%{key}@example.com", "whitespace"),
    ],
)
def test_template_parse_rejects(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AddressTemplate.parse(template)


def test_templates_compare_by_text() -> None:
    assert AddressTemplate.parse("a+%{key}@x.io") == AddressTemplate("a+%{key}@x.io")


def test_reply_message_id() -> None:
    assert reply_message_id("abc", "app.example.com") == "reply-abc@app.example.com"


def _headers_with_all(order: tuple[str, ...]) -> list[tuple[str, str]]:
    headers = []
    for name in order:
        key = name.lower()
        if name == "Received":
            value = f"from a by b with ESMTP id 1 for <incoming+{key}@example.com>; Tue, 14 May 2024"
        elif name in REFERENCE_HEADERS:
            value = f"<reply-{key}@app.example.com>"
        else:
            value = f"Someone <incoming+{key}@example.com>"
        headers.append((name, value))
    return headers


@pytest.mark.parametrize("winner", range(len(KEY_HEADERS) + len(REFERENCE_HEADERS)))
def test_header_order_precedence(winner: int) -> None:
    order = KEY_HEADERS + REFERENCE_HEADERS
    # Headers from the winner on, in reverse message order: precedence comes from the list, not position.
    headers = _headers_with_all(tuple(reversed(order[winner:])))
    assert find_reply_key(headers, TEMPLATE) == ReplyKey(order[winner].lower(), order[winner])


def test_first_matching_address_wins_and_names_are_case_insensitive() -> None:
    headers = [
        ("to", "other@example.com, incoming+first@example.com, incoming+second@example.com"),
        ("TO", "incoming+third@example.com"),
        ("DELIVERED-TO", "incoming+dt@example.com"),
    ]
    assert find_reply_key(headers, TEMPLATE) == ReplyKey("first", "To")


def test_non_matching_headers_fall_through() -> None:
    headers = [
        ("To", "support@example.com"),
        ("Cc", "incoming+cc-key@example.com"),
        ("References", "<reply-ref@app.example.com>"),
    ]
    assert find_reply_key(headers, TEMPLATE) == ReplyKey("cc-key", "Cc")


@pytest.mark.parametrize(
    "received",
    [
        "from x by mx.example.com with ESMTP id 1 for <incoming+r@example.com>; Tue, 14 May 2024",
        "from x by mx.example.com\r\n\tfor incoming+r@example.com; Tue, 14 May 2024",
        "from x by y FOR <incoming+r@example.com>",
        "from x by y for<incoming+r@example.com>;",
    ],
)
def test_received_for_clause(received: str) -> None:
    assert find_reply_key([("Received", received)], TEMPLATE) == ReplyKey("r", "Received")


def test_received_ignores_addresses_outside_for_clause() -> None:
    received = "from incoming+no@example.com by y with ESMTP id <incoming+no@example.com>"
    assert find_reply_key([("Received", received)], TEMPLATE) is None


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        # Exchange / iOS join ids with commas, sometimes without spaces.
        ("References", "<a@x.com>,<reply-k1@app.example.com>,<b@y.com>", "k1"),
        ("References", "<a@x.com>\r\n <reply-k2@gitlab.example.com> <reply-later@h>", "k2"),
        ("References", "<a@x.com>, <reply-k3@h>", "k3"),
        ("In-Reply-To", "<reply-k4@app.example.com>", "k4"),
        ("In-Reply-To", "reply-k5@app.example.com", "k5"),  # broken client, no brackets
        ("References", "<reply-@h>", None),
        ("References", "<xreply-k@h>", None),
        ("References", "<reply-k@>", None),
        ("References", "<no-key@h>", None),
    ],
)
def test_references_fallback(name: str, value: str, key: str | None) -> None:
    expected = ReplyKey(key, name) if key else None
    assert find_reply_key([(name, value)], TEMPLATE) == expected


def test_references_before_in_reply_to() -> None:
    headers = [("In-Reply-To", "<reply-irt@h>"), ("References", "<reply-refs@h>")]
    assert find_reply_key(headers, TEMPLATE) == ReplyKey("refs", "References")


def test_no_headers() -> None:
    assert find_reply_key([], TEMPLATE) is None


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "received",
    [
        "for <" * 200_000,  # GitLab's old ReDoS shape
        "for " * 250_000,
        "from x for <" + "a" * 1_000_000,
        "for\t" + " " * 1_000_000 + "<x",
        "<" * 1_000_000,
    ],
)
def test_hostile_received_header_is_fast(received: str) -> None:
    assert find_reply_key([("Received", received)], TEMPLATE) is None


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "value",
    ["(" * 1_000_000, "<" * 1_000_000, "a@b, " * 200_000, '"' * 1_000_000, "=?" * 500_000],
)
def test_hostile_address_and_reference_headers_are_fast(value: str) -> None:
    headers = [(name, value) for name in ("To", "Cc", "References", "In-Reply-To")]
    find_reply_key(headers, TEMPLATE)


def test_a_plain_address_is_a_catch_all_whose_mail_has_no_key() -> None:
    """issue 14: a mailbox address without %{key} (support@) is allowed; the key is simply absent."""
    template = AddressTemplate.parse("support@example.com")
    assert not template.has_key and AddressTemplate.parse("incoming+%{key}@example.com").has_key
    assert template.key_from_address("support@example.com") is None
    headers = [
        ("To", "support@example.com"),
        ("Delivered-To", "support+abc@example.com"),
        ("References", "<reply-abc123@app.example.com>"),
    ]
    assert find_reply_key(headers, template) is None
    with pytest.raises(ValueError, match="no %\\{key\\}"):
        template.fill("abc")


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("a\x00b", "NUL"),
        ("a\x1bb", "control"),
        ("a\x7fb", "control"),
        ("caf\u00e9", "non-ASCII"),
        ("k" * 257, "longer than 256"),
    ],
)
def test_a_key_with_nul_control_or_non_ascii_characters_is_refused(key: str, why: str) -> None:
    """Such a "key" never reaches an application: the search goes on, and the reason is reported."""
    problems: list[str] = []
    headers = {"to": [f"incoming+{key}@example.com"], "cc": ["incoming+good@example.com"]}
    assert find_reply_key_by_name(headers, TEMPLATE, problems=problems) == ReplyKey("good", "Cc")
    assert len(problems) == 1 and problems[0].startswith("reply key in To refused") and why in problems[0]
    assert key_problem(key) is not None
    refs = {"references": [f"<reply-{key}@app.example.com>"]}
    assert find_reply_key_by_name(refs, TEMPLATE) is None


def test_printable_keys_are_keys() -> None:
    for key in ("abc123", "a.b+c-d_e/f=g", "k" * 256, "!#$%&'*+/=?^_`{|}~"):
        assert key_problem(key) is None
