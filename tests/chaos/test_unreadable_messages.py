"""Scenario: unreadable messages in a backlog, and the watcher SIGKILLed while it bisects them.

Three message files of a 300-message backlog (start, middle, end) are made unreadable to Dovecot's mail
user (owner root, mode 0): Dovecot answers a FETCH including them with BYE. A real ``mailroom watch`` is
SIGKILLed after the first single-message failure and started again (the failure counts live in Redis), then
the queue is drained. Every readable message is handled exactly once; each unreadable one is a failed
record (never a job that ran), left unmarked on the server.
"""

from __future__ import annotations

from collections import Counter

import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from devstack import append_messages, count
from mailroom import poison
from mailroom.queue import UNREADABLE_META
from tests.chaos.harness import MailroomProcess, Outcome, batch, drain, imap, message_ids, wait_for_event
from tests.integration.test_unreadable_messages import make_unreadable
from tests.support import handled, mailbox_config, queue, use_config, wait_for, write_config

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_unreadable_messages_with_the_watcher_killed_mid_bisect(
    dovecot, imap_account, redis_url, tmp_path, monkeypatch
):
    sent = batch("u", 300)
    append_messages(*imap(imap_account), sent)
    bad_uids = [1, 150, 300]
    make_unreadable(dovecot, imap_account.username, bad_uids)
    readable = [raw for uid, raw in enumerate(sent, start=1) if uid not in bad_uids]
    config = write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account, batch_size=100))
    use_config(monkeypatch, config)  # for the in-process worker that drains
    log = tmp_path / "watch.log"
    watcher = MailroomProcess(config, log, "watch").start()
    faults = 0
    try:
        wait_for_event(log, "message_fetch_failed", timeout=60, process=watcher)
        watcher.kill()  # mid-bisect: the in-memory suspects are gone, the counts in Redis are not
        faults += 1
        watcher = MailroomProcess(config, log, "watch").start()
        registry = FailedJobRegistry(queue=queue(redis_url))
        wait_for(lambda: registry.count == 3 and count(*imap(imap_account)) == 3, timeout=90)
    finally:
        code, _ = watcher.terminate()
    drain(redis_url)

    connection = redis.Redis.from_url(redis_url)
    done = Counter(record.split("|", 1)[0] for record in handled(redis_url))
    expected = message_ids(readable)
    outcome = Outcome("unreadable-messages", len(sent), faults, notes=f"unreadable={len(bad_uids)}")
    outcome.handled = sum(done.values())
    outcome.lost = sorted(m for m in expected if done[m] == 0)
    outcome.doubled = {m: n for m, n in done.items() if n > 1}
    outcome.unexpected = sorted(set(done) - expected)
    records = [
        Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        for job_id in FailedJobRegistry(queue=queue(redis_url)).get_job_ids()
    ]
    outcome.failed = len(records)
    outcome.unmarked = count(*imap(imap_account)) - len(bad_uids)
    print(f"\n{outcome.line()}")
    outcome.assert_perfect()
    assert sorted(job.args[0]["uid"] for job in records) == bad_uids
    assert all(job.meta.get(UNREADABLE_META) for job in records)  # records, never a handler's failure
    ledger = connection.hgetall(poison.failures_key("support"))
    assert sorted(ledger.values()) == [b"recorded"] * 3
    assert code == 0
