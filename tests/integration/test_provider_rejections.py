"""Rejection replies through the real worker path (RQ job -> handle_email -> SMTP) to a real SMTP server
on loopback (aiosmtpd, STARTTLS with a trustme certificate, AUTH required), with the real Redis."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client import REGISTRY
from rq.registry import FailedJobRegistry

from mailroom.config import SmtpConfig
from mailroom.provider.errors import SmtpError, SuppressedRecipientError
from mailroom.provider.outbound import Mailer, message_id, reply_address
from mailroom.provider.rejection import SENT_PREFIX
from mailroom.provider.suppression import SuppressionList
from mailroom.schema import JobPayload
from tests.provider_servers import SmtpServer, smtp_server
from tests.support import queue, run_worker, use_config

pytestmark = pytest.mark.integration

_uids = itertools.count(1)


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    with smtp_server(tmp_path) as server:
        yield server


def smtp_section(server: SmtpServer, **over: Any) -> dict[str, Any]:
    section = {
        "host": server.host,
        "port": server.port,
        "security": "starttls",
        "ca_file": str(server.ca_file),
        "username": server.recorder.username,
        "password": server.recorder.password,
        "from_address": "noreply@app.example",
    }
    section.update(over)
    return section


@pytest.fixture
def configure(tmp_path: Path, redis_url: str, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    def apply(enabled: bool = True) -> None:
        config = {
            "redis_url": redis_url,
            "mailboxes": [
                {
                    "name": "support",
                    "host": "127.0.0.1",
                    "port": 1,
                    "security": "none",
                    "username": "u",
                    "password": "p",
                    "handler": "tests.provider_servers:rejecting_handler",
                    "retries": [],
                }
            ],
            "smtp": smtp_section(smtp),
            "rejections": {"enabled": enabled, "trusted_authserv_ids": [AUTHSERV]},
        }
        path = tmp_path / "mailroom.yml"
        path.write_text(yaml.safe_dump(config))
        use_config(monkeypatch, path)
        import workers.rejections

        workers.rejections._rejector.cache_clear()

    apply()
    return apply


AUTHSERV = "mx.app.example"
UNVOUCHED = "sender_not_authenticated"


def received_as(sender: str, auth: str | None = "spf=pass smtp.mailfrom={sender}") -> bytes:
    """The header the receiving server writes: Return-Path (the envelope sender), its own
    Authentication-Results on top; then what the sender wrote."""
    address = sender.strip()
    results = f"Authentication-Results: {AUTHSERV}; {auth.format(sender=address)}\r\n" if auth else ""
    return (
        f"Return-Path: <{address}>\r\n{results}From: {address}\r\nSubject: SECRET-SUBJECT\r\n\r\n"
        "SECRET-BODY\r\n"
    ).encode()


def payload(sender: str, key: str | None, **over: Any) -> JobPayload:
    uid = next(_uids)
    fields: dict[str, Any] = dict(
        mailbox="support", source="inject", uidvalidity=1, uid=uid,
        received_at="2024-01-01T00:00:00+00:00", size=100, truncated=False,
        message_id=f"m{uid}@mua.example", key=key, key_header="To" if key else None,
        from_address=sender, subject=f"hello {uid}", auto_reply=False, bounce=False, parse_error=None,
        raw=received_as(sender),
    )  # fmt: skip
    fields.update(over)
    return JobPayload(**fields)


def process(redis_url: str, *payloads: JobPayload) -> None:
    q = queue(redis_url)
    for p in payloads:
        q.enqueue("workers.jobs.handle_email", p.to_json())
    run_worker(redis_url)


def received(server: SmtpServer) -> list[tuple[str, str]]:
    """(recipient, reason) of every message the SMTP server accepted."""
    return [(rcpts[0], str(msg["X-Mailroom-Rejection"])) for _, rcpts, msg in server.recorder.received]


def test_one_rejection_per_sender_and_reason_per_day(
    configure: Any, redis_url: str, smtp: SmtpServer
) -> None:
    suppressions = SuppressionList.from_url(redis_url)
    suppressions.suppress("dave@example.org", "bounce")
    jobs = [
        payload("jane@example.org", None),
        payload("jane@example.org", None),
        payload(" jane@EXAMPLE.org ", None),  # the same sender: domain case and spaces do not count
        payload("jane@example.org", "unknown"),
        payload("jane@example.org", "unknown"),
        payload("jane@example.org", "blocked"),
        payload("jane@example.org", "k1", truncated=True),
        payload("bob@example.org", None),
        payload("carl@example.org", None, auto_reply=True),  # never to an auto-reply
        payload("mailer-daemon@example.org", None, bounce=True),  # never to a bounce
        payload("dave@example.org", "unknown"),  # never to a suppressed address
        payload("noreply@app.example", None),  # never to ourselves
        payload("eve@example.org", "fine"),  # handled: no rejection
    ]
    process(redis_url, *jobs)

    assert sorted(received(smtp)) == [
        ("bob@example.org", "no_key"),
        ("jane@example.org", "no_key"),
        ("jane@example.org", "sender_not_allowed"),
        ("jane@example.org", "too_large"),
        ("jane@example.org", "unknown_key"),
    ]
    assert smtp.recorder.failed_logins == 0
    # Every message not handled stays in the failed registry with its raw bytes, but for the handled one
    # and the auto-reply and bounce, which the mailbox skips (auto_replies: skip, the default).
    failed = FailedJobRegistry("incoming_email", connection=redis.Redis.from_url(redis_url))
    assert failed.count == len(jobs) - 3

    # The day's claim expires after a day; once it has, the sender hears from us again.
    client = redis.Redis.from_url(redis_url)
    claim = f"{SENT_PREFIX}no_key:jane@example.org"
    assert 86_000 < client.ttl(claim) <= 86_400
    process(redis_url, payload("jane@example.org", None))
    assert len(received(smtp)) == 5
    client.delete(claim)  # "the next day"
    process(redis_url, payload("jane@example.org", None))
    assert len(received(smtp)) == 6


def test_rejection_headers(configure: Any, redis_url: str, smtp: SmtpServer) -> None:
    process(redis_url, payload("jane@example.org", "blocked", message_id="orig-7@mua.example"))
    ((mail_from, rcpts, message),) = smtp.recorder.received
    assert (mail_from, rcpts) == ("noreply@app.example", ["jane@example.org"])
    assert message["In-Reply-To"] == "<orig-7@mua.example>"
    assert message["References"] == "<orig-7@mua.example>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["From"] == "noreply@app.example"
    body = message.get_body()
    assert body is not None and "Only project members can reply." in body.get_content()


def test_off_unless_enabled(configure: Any, redis_url: str, smtp: SmtpServer) -> None:
    configure(enabled=False)
    process(redis_url, payload("jane@example.org", "unknown"), payload("jane@example.org", None))
    assert smtp.recorder.received == []
    failed = FailedJobRegistry("incoming_email", connection=redis.Redis.from_url(redis_url))
    assert failed.count == 1  # the unknown key; without rejections a keyless message is handled


def test_mailer_sends_and_refuses_suppressed(redis_url: str, smtp: SmtpServer) -> None:
    suppressions = SuppressionList.from_url(redis_url)
    mailer = Mailer(SmtpConfig(**smtp_section(smtp)), suppressions)
    message = EmailMessage()
    message["To"] = "jane@example.org"
    message["Reply-To"] = reply_address("k42", "incoming+%{key}@app.example")
    message["Message-ID"] = message_id("k42", "app.example")
    message["Subject"] = "New comment"
    message.set_content("hello")
    mailer.send(message)
    ((_, rcpts, got),) = smtp.recorder.received
    assert rcpts == ["jane@example.org"] and got["Reply-To"] == "incoming+k42@app.example"

    suppressions.suppress("jane@example.org", "complaint")
    with pytest.raises(SuppressedRecipientError, match=r"jane@example\.org"):
        mailer.send(message)
    assert len(smtp.recorder.received) == 1


def test_mailer_wrong_password_is_an_smtp_error(redis_url: str, smtp: SmtpServer) -> None:
    mailer = Mailer(SmtpConfig(**smtp_section(smtp, password="wrong")), None)
    message = EmailMessage()
    message["To"] = "jane@example.org"
    message.set_content("x")
    with pytest.raises(SmtpError, match="SMTPAuthenticationError"):
        mailer.send(message)
    assert smtp.recorder.received == []
    assert smtp.recorder.failed_logins >= 1  # smtplib tries PLAIN, then LOGIN


def _skipped(outcome: str) -> float:
    sample = REGISTRY.get_sample_value("mailroom_provider_rejections_skipped_total", {"why": outcome})
    return sample or 0.0


@pytest.mark.parametrize(
    ("raw", "outcome"),
    [
        (b"From: jane@example.org\r\n\r\nbody\r\n", "no_sender"),
        (received_as("jane@example.org", auth=None), UNVOUCHED),
        (received_as("jane@example.org", auth="spf=fail smtp.mailfrom={sender}; dkim=none"), UNVOUCHED),
        (received_as("jane@example.org", auth="spf=pass smtp.mailfrom=other@evil.example"), UNVOUCHED),
        (received_as("jane@example.org", auth="dkim=pass header.d=evil.example"), UNVOUCHED),
        (
            received_as("jane@example.org").replace(AUTHSERV.encode(), b"mx.forged.example"),
            UNVOUCHED,
        ),
        (b"Return-Path: <>\r\n" + received_as("jane@example.org"), "no_sender"),
    ],
    ids=["no-return-path", "no-auth-results", "spf-fail", "spf-other-sender", "dkim-other-domain",
         "untrusted-authserv", "null-sender"],
)  # fmt: skip
def test_no_backscatter_a_sender_the_receiving_server_does_not_vouch_for_gets_nothing(
    configure: Any, redis_url: str, smtp: SmtpServer, raw: bytes, outcome: str
) -> None:
    """A forged sender must not make mailroom mail a third party: the rejection is recorded, not sent."""
    before = _skipped(outcome)
    process(redis_url, payload("jane@example.org", None, raw=raw))
    assert smtp.recorder.received == []
    assert _skipped(outcome) == before + 1
    failed = FailedJobRegistry("incoming_email", connection=redis.Redis.from_url(redis_url))
    assert failed.count == 1  # the message itself is kept, as every rejected one


def test_the_reply_goes_to_the_envelope_sender_and_echoes_nothing(
    configure: Any, redis_url: str, smtp: SmtpServer
) -> None:
    """RFC 3834: to Return-Path, not From (here a different, unauthenticated address); DKIM pass for the
    envelope sender's domain is enough; neither the sender's Subject nor their body comes back."""
    raw = received_as("bounces+x@lists.example.org", auth="dkim=pass header.d=example.org")
    raw = raw.replace(b"From: bounces+x@lists.example.org", b"From: victim@elsewhere.example")
    process(redis_url, payload("victim@elsewhere.example", None, raw=raw, subject="SECRET-SUBJECT"))
    ((_, rcpts, message),) = smtp.recorder.received
    assert rcpts == ["bounces+x@lists.example.org"] and message["To"] == "bounces+x@lists.example.org"
    assert b"SECRET" not in message.as_bytes()
