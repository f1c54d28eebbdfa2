"""MailQueue writes RQ job hashes itself (one HSET instead of RQ's nine commands and a zlib pass per job).
These tests hold that to what RQ's own enqueue writes, so an RQ upgrade that changes the format fails here."""

from __future__ import annotations

import json
import zlib

import pytest
import redis
from rq import Retry
from rq.job import Job

from mailroom.config import ImapMailbox, Settings
from mailroom.queue import JOB_FUNCTION, MailQueue
from mailroom.redis_client import connect
from mailroom.schema import JobPayload

pytestmark = pytest.mark.integration

MAILBOX = ImapMailbox(
    name="support", host="127.0.0.1", security="none", username="u", password="p", retries=(10, 60)
)
PAYLOAD = JobPayload(
    mailbox="support",
    source="imap",
    uidvalidity=9,
    uid=3,
    received_at="2026-11-25T00:00:00+00:00",
    size=5,
    truncated=False,
    message_id="m@x",
    key="k",
    key_header="To",
    from_address="a@b",
    subject="s",
    auto_reply=False,
    bounce=False,
    parse_error=None,
    raw=b"hello",
)
# Differ by design: the job's own identity, timestamps, and data (compressed by RQ, not by us).
_PER_JOB = {"data", "description", "created_at", "enqueued_at"}


def test_job_hash_matches_what_rq_enqueue_writes(redis_url):
    connection = connect(redis_url)
    settings = Settings(redis_url=redis_url, mailboxes=(MAILBOX,))
    queue = MailQueue(connection, settings)
    (ours,) = queue.enqueue_batch(MAILBOX, [PAYLOAD])
    theirs = queue.rq_queue("incoming_email").enqueue_call(
        JOB_FUNCTION,
        args=(PAYLOAD.to_json(),),
        job_id="reference",
        timeout=settings.job_timeout,
        result_ttl=settings.result_ttl,
        failure_ttl=settings.failure_ttl,
        retry=Retry(max=2, interval=[10, 60]),
    )
    raw = redis.Redis.from_url(redis_url)
    ours_hash = raw.hgetall(Job.key_for(ours.job_id))
    theirs_hash = raw.hgetall(Job.key_for(theirs.id))
    assert ours_hash.keys() == theirs_hash.keys()
    for field in ours_hash.keys() - {f.encode() for f in _PER_JOB}:
        assert ours_hash[field] == theirs_hash[field], field
    assert json.loads(ours_hash[b"data"]) == json.loads(zlib.decompress(theirs_hash[b"data"]))
    assert raw.lrange("rq:queue:incoming_email", 0, -1) == [ours.job_id.encode(), b"reference"]


def test_rq_reads_our_job_back(redis_url):
    connection = connect(redis_url)
    queue = MailQueue(connection, Settings(redis_url=redis_url, mailboxes=(MAILBOX,)))
    (ours,) = queue.enqueue_batch(MAILBOX, [PAYLOAD])
    job = queue.rq_queue("incoming_email").fetch_job(ours.job_id)
    assert job.func_name == JOB_FUNCTION
    assert JobPayload.from_json(job.args[0]) == PAYLOAD
    assert job.retries_left == 2 and job.retry_intervals == [10, 60]
    assert job.get_status() == "queued" and job.origin == "incoming_email"
