"""The pipeline end to end on a real Dovecot and a real Redis: APPEND -> watcher -> RQ job -> handler."""

from __future__ import annotations

import base64
import time

import pytest
from rq.registry import FailedJobRegistry

from devstack import append_messages, count, make_message
from tests.support import (
    handled,
    mailbox_config,
    polled_count,
    queue,
    run_worker,
    use_config,
    wait_for,
    watching,
    write_config,
)

pytestmark = pytest.mark.integration

# A wake-up takes Dovecot's 0.5 s notification delay (1 s polling when inotify is exhausted) plus a
# FETCH and an enqueue; a loaded shared machine stretches that, never to the 300 s of a missed one.
WAKE_UP = 30.0


def _imap(account):
    return (account.host, account.port, account.username, account.password)


def test_appended_message_reaches_the_handler_exactly_once(imap_account, redis_url, tmp_path, monkeypatch):
    settings = use_config(
        monkeypatch, write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account))
    )
    with watching(settings):
        raw = make_message(1, to="Someone <incoming+abc123@example.com>")
        append_messages(*_imap(imap_account), [raw])
        wait_for(lambda: len(queue(redis_url)) == 1)
        wait_for(lambda: count(*_imap(imap_account)) == 0)  # marked \Seen after the enqueue
    job = queue(redis_url).jobs[0]
    payload = job.args[0]
    assert payload["key"] == "abc123" and payload["key_header"] == "To"
    assert job.id == f"support-{payload['uidvalidity']}-1"
    run_worker(redis_url)
    records = handled(redis_url)
    assert len(records) == 1 and records[0].endswith("|abc123")
    assert len(queue(redis_url)) == 0


def test_backlog_present_at_start_up_is_drained(imap_account, redis_url, tmp_path, monkeypatch):
    append_messages(*_imap(imap_account), [make_message(i) for i in range(200)])
    settings = use_config(
        monkeypatch, write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account, batch_size=50))
    )
    with watching(settings):
        wait_for(lambda: count(*_imap(imap_account)) == 0, timeout=60)
    assert len(queue(redis_url)) == 200
    run_worker(redis_url)
    keys = sorted(int(r.split("|key")[1]) for r in handled(redis_url))
    assert keys == list(range(200))


def test_idle_wakes_up_for_each_new_message(imap_account, redis_url, tmp_path, monkeypatch):
    """Each message appended while the watcher IDLEs (or while it marks and searches on its way back to
    IDLE) is queued without waiting for a renewal.

    With keepalive_interval 0 the IDLE is renewed only at idle_timeout (300 s), and it is the renewal
    that would rescue a missed wake-up (Dovecot announces, at the start of each IDLE, mail it had not
    reported). So a message queued within WAKE_UP was seen by the IDLE itself or by the catch-up's own
    SEARCH: the generous bound tolerates a loaded machine and still cannot pass a miss. (With the
    default 15 s renewal, a bound above 15 s would.)"""
    settings = use_config(
        monkeypatch,
        write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account, keepalive_interval=0)),
    )
    jobs = queue(redis_url)
    latencies = []
    with watching(settings):
        wait_for(lambda: polled_count(*_imap(imap_account), criteria="ALL") == 0)
        time.sleep(1)  # let the watcher reach IDLE
        for i in range(5):
            append_messages(*_imap(imap_account), [make_message(i)])
            appended = time.monotonic()
            wait_for(lambda i=i: len(jobs) == i + 1, timeout=WAKE_UP, interval=0.01)
            latencies.append(time.monotonic() - appended)
    print("IDLE wake-up latencies (ms):", [round(s * 1000) for s in latencies])
    assert len(jobs) == 5


def test_restart_between_enqueue_and_marking_gives_one_job(imap_account, redis_url, tmp_path, monkeypatch):
    """A watcher that dies after Redis took the jobs but before the STORE leaves them unmarked; the next one
    finds them again and the guard keys turn the redelivery into no new job."""
    import mailroom.imap.session as session_module

    append_messages(*_imap(imap_account), [make_message(i) for i in range(10)])
    settings = use_config(
        monkeypatch, write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account))
    )

    def crash(self, uids):
        raise session_module.ImapError("simulated crash before marking")

    with monkeypatch.context() as patch:
        patch.setattr(session_module.ImapSession, "mark_done", crash)
        with watching(settings):
            wait_for(lambda: len(queue(redis_url)) == 10)
    assert count(*_imap(imap_account)) == 10  # nothing marked

    with watching(settings):
        wait_for(lambda: count(*_imap(imap_account)) == 0)
    assert len(queue(redis_url)) == 10
    run_worker(redis_url)
    assert len(handled(redis_url)) == 10


def test_watcher_reconnects_after_imap_server_restart(make_dovecot, redis_url, tmp_path, monkeypatch):
    dovecot = make_dovecot()
    account = dovecot.add_user("restart", "secret")
    settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, mailbox_config(account)))
    with watching(settings):
        append_messages(*_imap(account), [make_message(1)])
        wait_for(lambda: len(queue(redis_url)) == 1)
        dovecot.restart()
        append_messages(*_imap(account), [make_message(2)])
        wait_for(lambda: len(queue(redis_url)) == 2, timeout=30)
        wait_for(lambda: count(*_imap(account)) == 0)


def test_redis_down_leaves_mail_unmarked_until_it_returns(imap_account, make_redis, tmp_path, monkeypatch):
    private = make_redis()
    settings = use_config(
        monkeypatch, write_config(tmp_path / "c.yml", private.url, mailbox_config(imap_account))
    )
    with watching(settings):
        wait_for(lambda: count(*_imap(imap_account), criteria="ALL") == 0)
        private.stop()
        append_messages(*_imap(imap_account), [make_message(i) for i in range(5)])
        time.sleep(3)
        assert count(*_imap(imap_account)) == 5  # nothing marked while Redis is away
        private.start()
        wait_for(lambda: count(*_imap(imap_account)) == 0, timeout=60)
    assert len(queue(private.url)) == 5
    run_worker(private.url)
    assert len(handled(private.url)) == 5


def test_unparseable_message_is_still_enqueued_with_its_bytes(imap_account, redis_url, tmp_path, monkeypatch):
    # (no NUL byte: Dovecot stores NUL as 0x80, so the server itself would not hold these bytes)
    raw = (
        b"From: =?bogus?Q?x?=\r\nTo: incoming+k1@example.com\r\nContent-Type: multipart/mixed\r\n\r\n\xfe\xff"
    )
    settings = use_config(
        monkeypatch, write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account))
    )
    with watching(settings):
        append_messages(*_imap(imap_account), [raw])
        wait_for(lambda: len(queue(redis_url)) == 1)
    payload = queue(redis_url).jobs[0].args[0]
    assert base64.b64decode(payload["raw"]) == raw
    assert payload["key"] == "k1"
    assert FailedJobRegistry(queue=queue(redis_url)).count == 0
