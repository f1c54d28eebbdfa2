"""Pure parts of the webhook receiver: signature verification and what an event means."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from mailroom.provider.webhooks import Reason, Unverified, decide, sign, verify

KEY = "key-0123456789abcdef"
NOW = 1_700_000_000


def body(timestamp: int | str = NOW, token: str = "tok-1", event: Any = None, **over: Any) -> bytes:
    signature: dict[str, Any] = {
        "timestamp": str(timestamp),
        "token": token,
        "signature": sign(KEY, timestamp, token),
    }
    signature.update(over)
    data = {"signature": signature, "event-data": event if event is not None else {"event": "delivered"}}
    return json.dumps(data).encode()


def test_signature_is_hex_hmac_sha256_of_timestamp_then_token() -> None:
    token = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
    mac = hmac.new(b"key", f"1529006854{token}".encode(), hashlib.sha256).hexdigest()
    assert sign("key", "1529006854", token) == mac
    assert sign("key", 1529006854, token) == mac


def test_valid_call_is_verified() -> None:
    verified = verify(body(), KEY, NOW + 5, 900)
    assert verified.token == "tok-1"
    assert verified.event == {"event": "delivered"}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", Reason.MALFORMED),
        (b"\xff\xfe", Reason.MALFORMED),
        (b"[]", Reason.MALFORMED),
        (json.dumps({"event-data": {}}).encode(), Reason.MISSING_SIGNATURE),
        (json.dumps({"signature": "x", "event-data": {}}).encode(), Reason.MISSING_SIGNATURE),
        (body(signature=None), Reason.MISSING_SIGNATURE),
        (body(signature="0" * 64), Reason.BAD_SIGNATURE),
        (body(signature=sign("other-key", NOW, "tok-1")), Reason.BAD_SIGNATURE),
        (body(token="tok-2", signature=sign(KEY, NOW, "tok-1")), Reason.BAD_SIGNATURE),
        (body(timestamp="abc"), Reason.MALFORMED),
        (body(timestamp=NOW - 901), Reason.STALE),
        (body(timestamp=NOW + 901), Reason.STALE),
        (
            json.dumps(
                {"signature": {"timestamp": str(NOW), "token": "t", "signature": sign(KEY, NOW, "t")}}
            ).encode(),
            Reason.MALFORMED,
        ),
    ],
)
def test_unverified_variants(raw: bytes, reason: Reason) -> None:
    with pytest.raises(Unverified) as info:
        verify(raw, KEY, NOW, 900)
    assert info.value.reason is reason


def test_edge_of_window_is_accepted() -> None:
    verify(body(timestamp=NOW - 900), KEY, NOW, 900)


def failed(severity: str, **extra: Any) -> dict[str, Any]:
    event = {
        "id": "ev-1",
        "event": "failed",
        "severity": severity,
        "recipient": " Jane.Doe@Example.COM ",
        "envelope": {"sender": "bounces@Mail.Example.org"},
        "delivery-status": {"code": 550, "message": "5.1.1 user unknown"},
    }
    event.update(extra)
    return event


def test_permanent_failure_suppresses() -> None:
    d = decide(failed("permanent"))
    assert (d.event, d.severity, d.domain) == ("failed", "permanent", "mail.example.org")
    assert d.recipient == "Jane.Doe@example.com"
    assert d.suppress == "bounce" and not d.temporary
    assert (d.code, d.message) == ("550", "5.1.1 user unknown")


def test_temporary_failure_counts() -> None:
    d = decide(failed("temporary"))
    assert d.suppress is None and d.temporary


@pytest.mark.parametrize(("event", "reason"), [("complained", "complaint"), ("unsubscribed", "unsubscribe")])
def test_complaint_and_unsubscribe_suppress(event: str, reason: str) -> None:
    assert decide({"event": event, "recipient": "a@b.example"}).suppress == reason


@pytest.mark.parametrize(
    "event",
    [
        {"event": "delivered", "recipient": "a@b.example"},
        {"event": "brand-new-event", "recipient": "a@b.example"},
        {"event": ["odd"], "recipient": {"x": 1}},
        {},
        failed("permanent", recipient="not-an-address"),
    ],
)
def test_other_events_never_suppress(event: dict[str, Any]) -> None:
    d = decide(event)
    assert d.suppress is None and not d.temporary


def test_unknown_event_label_is_bounded() -> None:
    assert decide({"event": "x" * 500}).event == "unknown"
