"""What the parser property tests (test_parse_properties.py) do not reach: huge and broken base64 parts."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailroom.keys import AddressTemplate
from mailroom.message import parse_body, parse_message
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
