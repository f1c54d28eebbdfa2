"""parse_message over real samples, and parse_body for workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mailroom.keys import AddressTemplate
from mailroom.message import (
    MAX_FIELD_CHARS,
    Attachment,
    MessageBody,
    ParsedMessage,
    parse_body,
    parse_message,
)

DATA = Path(__file__).resolve().parent.parent / "data"
TEMPLATE = AddressTemplate.parse("incoming+%{key}@example.com")

# file -> (key, key_header, auto_reply, bounce, message_id, parse_error expected)
SAMPLES: dict[str, tuple[str | None, str | None, bool, bool, str | None, bool]] = {
    "plain_reply.eml": ("abc123", "To", False, False, "CAF1x2y3z@mail.example.org", False),
    "multipart_alternative_rfc2047.eml": (
        "k2-x.y",
        "To",
        False,
        False,
        "20240515060000.GA1234@example.de",
        False,
    ),
    "delivered_to_only.eml": ("dt-key", "Delivered-To", False, False, "list-reply-1@example.org", False),
    "received_for_only.eml": ("rcv_key", "Received", False, False, "bcc-reply@example.net", False),
    "references_exchange.eml": (
        "ref-key",
        "References",
        False,
        False,
        "DM6PR01MB1234.namprd01.prod.outlook.com",
        False,
    ),
    "out_of_office.eml": ("ooo-key", "To", True, False, "ooo-1@example.org", False),
    "x_autoreply.eml": ("xar-key", "To", True, False, "xar-1@example.org", False),
    "precedence_bulk.eml": ("bulk-key", "To", True, False, "bulk-1@example.org", False),
    "bounce_dsn.eml": ("bounce-key", "To", True, True, "20240522170000.ABC12@mx.example.net", False),
    "truncated.eml": ("trunc-key", "To", False, False, "trunc-1@example.org", True),
    "bad_charset.eml": ("charset-key", "To", False, False, "charset-1@example.org", True),
    "attachment.eml": ("att-key", "To", False, False, "att-1@example.org", False),
}


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def test_every_sample_has_a_row() -> None:
    assert sorted(p.name for p in DATA.glob("*.eml")) == sorted(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample(name: str) -> None:
    key, key_header, auto_reply, bounce, message_id, has_error = SAMPLES[name]
    parsed = parse_message(load(name), TEMPLATE)
    assert (parsed.key, parsed.key_header) == (key, key_header)
    assert (parsed.auto_reply, parsed.bounce) == (auto_reply, bounce)
    assert parsed.message_id == message_id
    assert (parsed.parse_error is not None) == has_error, parsed.parse_error
    if parsed.parse_error:
        assert "\n" not in parsed.parse_error


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_as_dict_is_json_ready_and_complete(name: str) -> None:
    parsed = parse_message(load(name), TEMPLATE)
    data = parsed.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["from"] == parsed.from_address
    assert set(data) == {"from"} | {f for f in ParsedMessage.__dataclass_fields__ if f != "from_address"}


def test_plain_reply_fields() -> None:
    parsed = parse_message(load("plain_reply.eml"), TEMPLATE)
    assert parsed.from_address == "alice@example.org"
    assert parsed.to == ("incoming+abc123@example.com",)
    assert parsed.cc == ()
    assert parsed.subject == "Re: Build #42 failed"
    assert parsed.date == "2024-05-14T11:12:40+02:00"
    assert parsed.in_reply_to == "reply-abc123@app.example.com"


def test_rfc2047_subject_and_addresses() -> None:
    parsed = parse_message(load("multipart_alternative_rfc2047.eml"), TEMPLATE)
    assert parsed.subject == "Re: Café ☕ réunion"
    assert parsed.from_address == "joerg@example.de"
    assert parsed.to == ("incoming+k2-x.y@EXAMPLE.COM",)
    assert parsed.cc == ("bob@example.net", "carol@example.net")


def test_bad_charset_is_data_not_an_exception() -> None:
    parsed = parse_message(load("bad_charset.eml"), TEMPLATE)
    assert parsed.subject == "Hello World été"
    assert parsed.date is None
    assert parsed.parse_error is not None
    assert "x-no-such-charset" in parsed.parse_error


@pytest.mark.parametrize(
    ("headers", "auto_reply", "bounce"),
    [
        ("Auto-Submitted: no", False, False),
        ("Auto-Submitted: No", False, False),
        ("Auto-Submitted: auto-generated", True, False),
        ("Auto-Submitted: auto-replied; owner-email=x@y", True, False),
        ("X-Autoreply: yes", True, False),
        ("X-Autoreply: no", False, False),
        ("X-Autorespond: Out of office", True, False),
        ("Precedence: junk", True, False),
        ("Precedence: auto_reply", True, False),
        ("Precedence: list", False, False),  # mailing-list traffic is human mail
        ("From: postmaster@example.net", True, True),
        ("From: Mail Delivery Subsystem <Mailer-Daemon@mx.example.net>", True, True),
        ("From: MAILER-DAEMON (Mail Delivery System)", True, True),
        ("Content-Type: multipart/report; report-type=delivery-status; boundary=b", True, True),
        ('Content-Type: multipart/report; report-type="Delivery-Status"', True, True),
        ("Content-Type: multipart/report; report-type=disposition-notification", False, False),
        ("X-Auto-Response-Suppress: All", False, False),  # Outlook sets this on human mail
    ],
)
def test_flags(headers: str, auto_reply: bool, bounce: bool) -> None:
    if not headers.startswith("From:"):
        headers = "From: someone@example.org\r\n" + headers
    raw = (headers + "\r\nTo: incoming+k@example.com\r\n\r\nbody\r\n").encode()
    parsed = parse_message(raw, TEMPLATE)
    assert (parsed.auto_reply, parsed.bounce) == (auto_reply, bounce)


def test_headers_only_no_body_is_clean() -> None:
    parsed = parse_message(b"From: a@b.c\nTo: incoming+k@example.com\n", TEMPLATE)
    assert parsed.key == "k"
    assert parsed.parse_error is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\nbody only",
        b"\x00\x01\x02 binary junk",
        b"To: incoming+k@example.com\r\nthis line is not a header\r\nCc: x@y.z\r\n\r\n",
        b" folded first line\r\nTo: incoming+k@example.com\r\n\r\n",
        b"From: =?utf-8?B?!!!notbase64?= <a@b.c>\r\nSubject: =?utf-8?B?a?=\r\n\r\n",
    ],
)
def test_malformed_input_is_data(raw: bytes) -> None:
    parsed = parse_message(raw, TEMPLATE)
    assert isinstance(parsed, ParsedMessage)
    assert parsed.parse_error is None or "\n" not in parsed.parse_error


def test_malformed_header_line_is_reported() -> None:
    raw = b"To: incoming+k@example.com\r\nthis line is not a header\r\nCc: x@y.z\r\n\r\n"
    parsed = parse_message(raw, TEMPLATE)
    assert parsed.key == "k"
    assert parsed.parse_error is not None


@pytest.mark.timeout(5)
def test_large_message_reads_headers_only() -> None:
    head = load("plain_reply.eml").split(b"\r\n\r\n", 1)[0]
    raw = head + b"\r\n\r\n" + (b"x" * 998 + b"\r\n") * (25 * 1024)  # ~25 MiB body
    parsed = parse_message(raw, TEMPLATE)
    assert parsed.key == "abc123"
    assert parsed.parse_error is None


@pytest.mark.timeout(5)
def test_oversized_header_block_is_capped_and_reported() -> None:
    raw = b"To: incoming+k@example.com\r\nX-Junk: " + b"a" * (3 * 1024 * 1024) + b"\r\n\r\nbody"
    parsed = parse_message(raw, TEMPLATE)
    assert parsed.key == "k"
    assert parsed.parse_error is not None
    assert "header block larger" in parsed.parse_error


@pytest.mark.timeout(5)
def test_hostile_received_in_a_message() -> None:
    raw = b"Received: " + b"for <" * 200_000 + b"\r\nTo: x@y.z\r\n\r\n"
    parsed = parse_message(raw, TEMPLATE)
    assert parsed.key is None


# ---------------------------------------------------------------------------------------------------
# parse_body


def test_body_multipart_alternative() -> None:
    body = parse_body(load("multipart_alternative_rfc2047.eml"))
    assert body.text is not None and "Grüße aus Köln" in body.text
    assert body.html is not None and "<p>Grüße aus Köln</p>" in body.html
    assert body.attachments == ()
    assert body.parse_error is None


def test_body_attachment() -> None:
    body = parse_body(load("attachment.eml"))
    assert body.text is not None and "Report attached." in body.text
    assert body.attachments == (Attachment("report.pdf", "application/pdf", 1040),)


def test_body_bad_charset() -> None:
    body = parse_body(load("bad_charset.eml"))
    assert body.text is not None and body.text.startswith("Caf")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_body_never_raises_on_samples(name: str) -> None:
    assert isinstance(parse_body(load(name)), MessageBody)


def test_body_falls_back_to_stdlib(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes) -> Any:
        raise RuntimeError("mail-parser blew up")

    monkeypatch.setattr("mailparser.parse_from_bytes", broken)
    body = parse_body(load("attachment.eml"))
    assert body.text is not None and "Report attached." in body.text
    assert body.attachments == (Attachment("report.pdf", "application/pdf", 1040),)
    assert body.parse_error is not None and "mail-parser blew up" in body.parse_error

    alt = parse_body(load("multipart_alternative_rfc2047.eml"))
    assert alt.text is not None and "Grüße" in alt.text
    assert alt.html is not None and "<p>" in alt.html


def test_header_derived_fields_are_capped_and_the_cut_noted() -> None:
    huge = "x" * 300_000
    raw = (
        f"Message-ID: <{huge}@example.org>\r\nFrom: {huge[:5000]}@example.org\r\nSubject: {huge}\r\n"
        f"In-Reply-To: <{huge}>\r\nTo: incoming+{huge}@example.com, incoming+fine@example.com\r\n\r\nbody\r\n"
    ).encode()
    parsed = parse_message(raw, TEMPLATE)
    for value in (parsed.message_id, parsed.from_address, parsed.subject, parsed.in_reply_to):
        assert value is not None and len(value) == MAX_FIELD_CHARS
    assert parsed.key == "fine"  # the 1 MB key is refused, never cut into another key
    error = parsed.parse_error or ""
    for name in ("Message-ID", "From", "In-Reply-To"):
        assert f"{name} longer than {MAX_FIELD_CHARS} characters, cut" in error
    assert "reply key in To refused: longer than" in error


def test_a_key_with_control_characters_is_not_a_key() -> None:
    raw = b"To: incoming+a\x1bb@example.com\r\nSubject: s\r\n\r\nbody\r\n"
    parsed = parse_message(raw, TEMPLATE)
    assert parsed.key is None and "reply key in To refused: contains control characters" in (
        parsed.parse_error or ""
    )
