"""The history stays bounded by count and age, and a status update never resurrects an expired record."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from mailroom import history
from mailroom.schema import JobPayload

pytestmark = pytest.mark.integration


def payload(i: int) -> JobPayload:
    return JobPayload(
        mailbox="support", source="imap", uidvalidity=1, uid=i, received_at="2026-01-01T00:00:00+00:00",
        size=10, truncated=False, message_id=f"<m{i}@x>", key=f"k{i}", key_header="To",
        from_address=f"Alice{i} <alice{i}@example.org>", subject=f"s{i}", auto_reply=False, bounce=False,
        parse_error=None, raw=b"x",
    )  # fmt: skip


def add(connection: redis.Redis, i: int, ttl: int, max_entries: int, now: float) -> None:
    with connection.pipeline() as pipe:
        history.add_to_pipeline(pipe, payload(i), f"job-{i}", ttl, max_entries, now=now)
        pipe.execute()


def test_history_is_bounded_by_count_and_age(redis_url):
    connection = redis.Redis.from_url(redis_url)
    now = time.time()
    for i in range(30):
        add(connection, i, ttl=3600, max_entries=10, now=now + i)
    assert connection.zcard(history.INDEX_KEY) == 10
    assert len(connection.keys(history.RECORD_PREFIX + "*")) == 10  # trimmed hashes deleted too
    found = history.search(connection, history.Query())
    assert [e.job_id for e in found] == [f"job-{i}" for i in range(29, 19, -1)]  # newest first

    add(connection, 99, ttl=3600, max_entries=10, now=now + 2 * 3600)  # two hours later
    assert [e.job_id for e in history.search(connection, history.Query())] == ["job-99"]
    assert 0 < connection.ttl(history.RECORD_PREFIX + "job-99") <= 3600


def test_queries_and_status_updates(redis_url):
    connection = redis.Redis.from_url(redis_url)
    now = time.time()
    for i in range(5):
        add(connection, i, ttl=3600, max_entries=100, now=now - i * 600)
    assert [e.key for e in history.search(connection, history.Query(from_address="ALICE3@"))] == ["k3"]
    assert [e.key for e in history.search(connection, history.Query(message_id="m2@x"))] == ["k2"]
    since = datetime.now(UTC) - timedelta(minutes=25)
    assert [e.key for e in history.search(connection, history.Query(since=since))] == ["k0", "k1", "k2"]
    assert history.set_status(connection, "job-1", history.Status.FAILED, "Boom\nValueError: x")
    entry = history.get(connection, "job-1")
    assert entry is not None and entry.status == "failed" and entry.error == "Boom ValueError: x"
    assert not history.set_status(connection, "job-gone", history.Status.HANDLED)
    assert not connection.exists(history.RECORD_PREFIX + "job-gone")
