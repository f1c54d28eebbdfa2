"""Console (non-JSON) logs never hand a terminal the control characters of hostile mail: a Subject with
ESC[2K ESC[1A (erase the line, move up) rewrote the operator's screen. Real Redis, RQ's worker, the log
handler."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
import structlog

import workers.handlers.log
from mailroom import logs
from mailroom.config import MailboxKind
from mailroom.keys import AddressTemplate
from mailroom.queue import MailQueue
from mailroom.redis_client import connect
from mailroom.schema import JobPayload
from mailroom.source import SourceMessage
from tests.integration.test_thread_worker import _settings
from tests.support import run_worker
from workers import jobs

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _job_settings_after():
    """_settings() hands the job module its settings: later tests must not inherit them."""
    yield
    jobs.configure(None)


ATTACK = "\x1b[2K\x1b[1A\x1b]0;owned\x07"
RAW = (
    "From: =?utf-8?q?Mallory=1B=5B2K?= <mallory@example.org>\r\nTo: incoming+k@example.com\r\n"
    f"Subject: Re:{ATTACK}\r\nMessage-ID: <m1@example.org>\r\n\r\nbody\r\n"
).encode()


def _handled_with_logs(tmp_path, redis_url, monkeypatch, fmt: str) -> str:
    # structlog caches a module's logger on first use, with the stream configured then: a fresh one here
    monkeypatch.setattr(workers.handlers.log, "log", structlog.get_logger("mailroom.handler.log"))
    settings = _settings(tmp_path, redis_url, handler="log")
    mailbox = settings.mailboxes[0]
    fetched = SourceMessage(MailboxKind.IMAP, 1, RAW, len(RAW), datetime.now(UTC), epoch=1)
    payload = JobPayload.from_message(mailbox.name, fetched, AddressTemplate.parse(mailbox.address))
    MailQueue(connect(settings.redis_url), settings).enqueue_batch(mailbox, [payload])
    out = io.StringIO()
    logs.configure(fmt, stream=out)
    try:
        run_worker(redis_url)
    finally:
        logs.configure("json")
    return out.getvalue()


def test_console_logs_show_control_characters_as_escapes(tmp_path, redis_url, monkeypatch):
    """structlog's console renderer quotes (repr) a value with a space, but prints one without as is."""
    text = _handled_with_logs(tmp_path, redis_url, monkeypatch, "console")
    (line,) = [x for x in text.splitlines() if "email_received" in x]
    for sequence in ("\x1b[2K", "\x1b[1A", "\x1b]0;", "\x07"):
        assert sequence not in line
    assert "\\x1b[2K\\x1b[1A" in line  # still readable: the operator sees what was sent


def test_json_logs_keep_the_text_exact(tmp_path, redis_url, monkeypatch):
    text = _handled_with_logs(tmp_path, redis_url, monkeypatch, "json")
    (event,) = [json.loads(x) for x in text.splitlines() if "email_received" in x]
    assert event["subject"] == f"Re:{ATTACK}" and "\x1b" not in text  # JSON escapes it
