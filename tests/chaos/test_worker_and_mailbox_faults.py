"""Scenarios 5, 6 and 7: a worker SIGKILLed mid-job, UIDVALIDITY changes, a handler that always fails."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from devstack import append_messages, count, recreate_folder
from tests.chaos.handlers import STARTED_KEY
from tests.chaos.harness import (
    MailroomProcess,
    batch,
    drain,
    event_counts,
    imap,
    message_ids,
    verify,
    wait_for_event,
)
from tests.support import mailbox_config, queue, use_config, wait_for, watching, write_config

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]


def _started_pid(redis_url: str, message_id: str) -> int | None:
    """The pid of the process running ``message_id``'s handler, once it has started."""
    client = redis.Redis.from_url(redis_url)
    for item in client.lrange(STARTED_KEY, 0, -1):
        started_id, _, pid = item.decode().partition("|")
        if started_id == message_id:
            return int(pid)
    return None


@pytest.mark.timeout(180)
def test_worker_sigkilled_mid_job(imap_account, redis_url, tmp_path, monkeypatch):
    """The work-horse killed (its worker survives), then a whole worker killed with its horse: each
    interrupted job is retried (one retry configured) and handled once; nothing is dropped."""
    sent = batch("w", 10) + batch("slow", 1) + batch("w", 10, start=10) + batch("slow", 1, start=1)
    sent += batch("w", 10, start=20)
    slow0, slow1 = (message_ids([raw]).pop() for raw in (sent[10], sent[21]))
    mailbox = mailbox_config(imap_account, handler="tests.chaos.handlers:slow_or_record", retries=[0])
    config = write_config(tmp_path / "c.yml", redis_url, mailbox)
    settings = use_config(monkeypatch, config)
    with watching(settings):
        append_messages(*imap(imap_account), sent)
        wait_for(lambda: count(*imap(imap_account)) == 0, timeout=60)
    assert len(queue(redis_url)) == len(sent)

    log = tmp_path / "worker.log"
    # Work horses exist with fork isolation (RQ's Worker); the threaded worker is killed whole below.
    first = MailroomProcess(config, log, "worker", "--isolation", "fork").start()
    horse = wait_for(lambda: _started_pid(redis_url, slow0), timeout=60)
    os.kill(horse, signal.SIGKILL)  # the OOM killer's choice: the horse dies, its worker lives on
    horse = wait_for(lambda: _started_pid(redis_url, slow1), timeout=60)
    # The pod dies: worker, scheduler and horse at once (RQ puts the horse in a session of its own, so
    # it needs its own kill). slow1 stays "started" in Redis.
    os.kill(horse, signal.SIGKILL)
    first.kill()
    rq_queue = queue(redis_url)
    started = StartedJobRegistry(queue=rq_queue)
    assert len(started.get_job_ids()) == 1
    # A dead worker's job is found by the next worker's registry maintenance once its heartbeat has
    # expired (job_monitoring_interval + 60 s). Run that same RQ code with the clock moved past it.
    started.cleanup(timestamp=time.time() + 120)
    second = MailroomProcess(config, log, "worker", "--isolation", "fork", "--burst").start()
    assert second.proc is not None
    assert second.proc.wait(120) == 0
    drain(redis_url)  # nothing should be left; this only makes verify()'s preconditions hold
    outcome = verify("sigkill-worker", sent, redis_url, [imap_account], faults=2)
    outcome.assert_perfect()
    assert outcome.failed == 0  # both interrupted jobs had a retry left and were handled on it


@pytest.mark.timeout(180)
def test_uidvalidity_changes_skip_no_message_of_the_new_generation(
    dovecot, imap_account, redis_url, tmp_path, monkeypatch
):
    user = imap_account.username
    recreate_folder(*imap(imap_account), "Support")
    inbox, support = imap_account, dovecot.account(user, folder="Support")
    config = write_config(
        tmp_path / "c.yml",
        redis_url,
        mailbox_config(inbox, name="inbox"),
        mailbox_config(support, name="support"),
    )
    use_config(monkeypatch, config)
    log = tmp_path / "watch.log"
    watcher = MailroomProcess(config, log).start()
    wait_for_event(log, "imap_connected", after=1, timeout=60)
    sent = batch("a", 20) + batch("b", 20)
    append_messages(*imap(inbox), sent[:20])
    append_messages(*imap(support), sent[20:], folder="Support")
    for account in (inbox, support):
        wait_for(lambda a=account: count(*imap(a), folder=a.folder) == 0, timeout=60, interval=0.2)

    # INBOX cannot be deleted: change its UIDVALIDITY in place (Dovecot ends the selected session)
    dovecot.set_uidvalidity(user, 4242)
    after_inbox = batch("c", 20)
    append_messages(*imap(inbox), after_inbox)
    # Support is deleted and created again: the new generation reuses UIDs 1..20
    recreate_folder(*imap(inbox), "Support")
    after_support = batch("d", 20)
    append_messages(*imap(support), after_support, folder="Support")
    sent += after_inbox + after_support
    for account in (inbox, support):
        wait_for(lambda a=account: count(*imap(a), folder=a.folder) == 0, timeout=60, interval=0.2)
    code, took = watcher.terminate()
    assert code == 0
    drain(redis_url)
    events = event_counts(log)
    outcome = verify(
        "uidvalidity",
        sent,
        redis_url,
        [inbox, support],
        faults=2,
        notes=f"uidvalidity_changed_events={events['uidvalidity_changed']} sigterm_exit={took:.1f}s",
    )
    outcome.assert_perfect()


@pytest.mark.timeout(120)
def test_always_failing_handler_parks_the_message_and_the_rest_flow(
    imap_account, redis_url, tmp_path, monkeypatch
):
    sent = batch("ok", 20) + batch("poison", 3) + batch("ok", 20, start=20)
    poison = message_ids(sent[20:23])
    mailbox = mailbox_config(imap_account, handler="tests.chaos.handlers:poison_or_record", retries=[0, 0])
    settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, mailbox))
    with watching(settings):
        append_messages(*imap(imap_account), sent)
        wait_for(lambda: count(*imap(imap_account)) == 0, timeout=60)
    drain(redis_url)
    outcome = verify("failing-handler", sent, redis_url, [imap_account], faults=len(poison))
    outcome.assert_perfect()
    rq_queue = queue(redis_url)
    failed = FailedJobRegistry(queue=rq_queue)
    assert failed.count == len(poison) and outcome.handled == len(sent) - len(poison)
    for job_id in failed.get_job_ids():
        job = Job.fetch(job_id, connection=rq_queue.connection, serializer=JSONSerializer)
        assert job.args[0]["message_id"] in poison
        assert job.retries_left == 0  # both retries were spent first
        assert "always fails" in (job.latest_result().exc_string or "")
        assert job.args[0]["raw"]  # parked with its raw bytes
