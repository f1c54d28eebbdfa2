"""Outbound helpers, address normalisation and the rejection message: pure."""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest

from mailroom.keys import AddressTemplate, find_reply_key
from mailroom.message import parse_message
from mailroom.provider.outbound import message_id, recipients, reply_address
from mailroom.provider.rejection import build
from mailroom.provider.suppression import normalise
from mailroom.schema import JobPayload

TEMPLATE = AddressTemplate.parse("incoming+%{key}@Example.com")


@pytest.mark.parametrize("key", ["abc123", "a1b2c3d4e5f6-unsubscribe", "Z.z_9"])
def test_round_trip_address_and_message_id(key: str) -> None:
    address = reply_address(key, TEMPLATE)
    mid = message_id(key, "app.example.net")
    assert address == f"incoming+{key}@Example.com" and mid == f"<reply-{key}@app.example.net>"
    # A reply to the notification: To carries the address.
    to_reply = f"From: jane@example.org\r\nTo: App <{address}>\r\nSubject: Re: x\r\n\r\nhi\r\n".encode()
    parsed = parse_message(to_reply, TEMPLATE)
    assert (parsed.key, parsed.key_header) == (key, "To")
    # A reply whose To lost the address (forwarded, rewritten): the References fallback.
    lost = f"From: jane@example.org\r\nTo: other@example.org\r\nReferences: {mid}\r\n\r\nhi\r\n".encode()
    parsed = parse_message(lost, TEMPLATE)
    assert (parsed.key, parsed.key_header) == (key, "References")
    found = find_reply_key([("In-Reply-To", mid)], TEMPLATE)
    assert found is not None and found.key == key


@pytest.mark.parametrize("key", ["", "a b", "a@b", "a>b", "a,b"])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        reply_address(key, TEMPLATE)
    with pytest.raises(ValueError):
        message_id(key, "host.example")


def test_reply_address_accepts_a_template_string() -> None:
    assert reply_address("k", "reply+%{key}@app.example") == "reply+k@app.example"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Jane.Doe@EXAMPLE.com\n", "Jane.Doe@example.com"),
        ("<JANE@Example.Com>", "JANE@example.com"),
        ("a@b", "a@b"),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "no-at-sign", "@example.com", "a@", "a b@example.com"])
def test_normalise_refuses_non_addresses(raw: str) -> None:
    with pytest.raises(ValueError):
        normalise(raw)


def payload(**over: object) -> JobPayload:
    fields: dict[str, object] = dict(
        mailbox="support", source="imap", uidvalidity=1, uid=7, received_at="2024-01-01T00:00:00+00:00",
        size=10, truncated=False, message_id="orig-1@mua.example", key=None, key_header=None,
        from_address="jane@example.org", subject="Hello\r\nBcc: evil@example.org", auto_reply=False,
        bounce=False, parse_error=None, raw=b"",
    )  # fmt: skip
    fields.update(over)
    return JobPayload(**fields)  # type: ignore[arg-type]


def test_rejection_message_headers() -> None:
    message = build(payload(), "no_key", "noreply@app.example", "app.example", None)
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert parsed["To"] == "jane@example.org"
    assert parsed["In-Reply-To"] == "<orig-1@mua.example>"
    assert parsed["References"] == "<orig-1@mua.example>"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["Bcc"] is None  # the subject's CRLF did not inject a header
    assert parsed["Message-ID"].endswith("@app.example>")
    assert "does not belong to any" in parsed.get_content()


def test_recipients() -> None:
    message = build(payload(), "too_large", "noreply@app.example", "app.example", None)
    message["Cc"] = "A <a@example.org>, b@example.org"
    assert recipients(message) == ["jane@example.org", "a@example.org", "b@example.org"]
