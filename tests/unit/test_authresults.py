"""Authentication-Results (RFC 8601) as the rejection reply reads it: pure."""

from __future__ import annotations

import pytest

from mailroom.provider.authresults import envelope_sender, vouch

TRUSTED = ["mx.example.com"]


def headers(results: str, return_path: str = "<jane@example.org>") -> list[tuple[str, str]]:
    return [("return-path", return_path), ("authentication-results", results), ("from", "x@y")]


@pytest.mark.parametrize(
    ("results", "method"),
    [
        ("mx.example.com; spf=pass smtp.mailfrom=jane@example.org", "spf"),
        ("mx.example.com 1; spf=pass (sender SPF authorized) smtp.mailfrom=example.org", "spf"),
        ('MX.example.com; dkim=pass (2048-bit key) header.d=example.org header.i="@example.org"', "dkim"),
        ("mx.example.com; dkim=pass header.d=sub.example.org", None),  # a subdomain vouches for no parent
        ("mx.example.com; spf=softfail smtp.mailfrom=jane@example.org; dkim=fail header.d=example.org", None),
        ("mx.example.com; spf=pass smtp.mailfrom=other@example.net", None),
        ("mx.other.com; spf=pass smtp.mailfrom=jane@example.org", None),  # not a trusted server
        ("mx.example.com; none", None),
    ],
)
def test_vouch(results, method):
    assert vouch(headers(results), TRUSTED).method == method


def test_only_the_topmost_trusted_header_counts():
    forged = [
        ("return-path", "<jane@example.org>"),
        ("authentication-results", "mx.example.com; spf=fail smtp.mailfrom=jane@example.org"),
        ("authentication-results", "mx.example.com; spf=pass smtp.mailfrom=jane@example.org"),  # the sender's
    ]
    assert vouch(forged, TRUSTED).method is None


def test_no_trusted_id_configured_sends_nothing():
    assert vouch(headers("mx.example.com; spf=pass smtp.mailfrom=jane@example.org"), []).method is None


@pytest.mark.parametrize(
    ("value", "sender"), [("<a@b.c>", "a@b.c"), ("<>", None), ("", None), ("<a b@c>", None)]
)
def test_envelope_sender(value, sender):
    assert envelope_sender([("Return-Path", value)]) == sender
