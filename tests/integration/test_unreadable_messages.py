"""One unreadable message never stalls a mailbox (mailroom.poison), on real Dovecot and Redis: message files
Dovecot's mail user cannot read (owner root, mode 0: Dovecot answers their FETCH with BYE) at the start,
middle and end of a backlog, and a server that answers NO to any FETCH including a given UID (the test proxy
in front of Dovecot, as Gmail's "Some messages could not be FETCHed")."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY
from rq.registry import FailedJobRegistry

from devstack import Dovecot, append_messages, count, make_message
from mailroom import failed as failed_lib
from mailroom import history, poison
from tests.imapproxy import ImapProxy
from tests.support import mailbox_config, queue, use_config, wait_for, watching, write_config

pytestmark = pytest.mark.integration
GMAIL = b"Some messages could not be FETCHed (Failure)"


def _imap(account):
    return (account.host, account.port, account.username, account.password)


def message_files(dovecot: Dovecot, user: str, uids: list[int]) -> dict[int, Path]:
    """The Maildir file of each UID (by dovecot-uidlist), wherever it is now (new/ or cur/)."""
    maildir = dovecot.maildir(user)
    bases = {}
    for line in (maildir / "dovecot-uidlist").read_text().splitlines()[1:]:
        uid, _, rest = line.partition(" ")
        bases[int(uid)] = rest.rsplit(":", 1)[-1] if rest.startswith(":") else rest.split(":", 1)[-1]
    files = {}
    for uid in uids:
        base = bases[uid].split(":")[0]
        (found,) = [p for d in ("new", "cur") for p in (maildir / d).iterdir() if p.name.startswith(base)]
        files[uid] = found
    return files


def make_unreadable(dovecot: Dovecot, user: str, uids: list[int]) -> None:
    """Owner root, mode 0: unreadable to Dovecot's mail processes (they run as dovecot.mail_uid, not
    root; a test running as root could still read it, so the check is Dovecot's own)."""
    assert dovecot.mail_uid != 0
    for path in message_files(dovecot, user, uids).values():
        os.chown(path, 0, 0)
        os.chmod(path, 0)


def make_readable(dovecot: Dovecot, user: str, uids: list[int]) -> None:
    for path in message_files(dovecot, user, uids).values():
        os.chown(path, dovecot.mail_uid, dovecot.mail_gid)
        os.chmod(path, 0o600)


def _unreadable_total() -> float:
    return REGISTRY.get_sample_value("mailroom_messages_unreadable_total", {"mailbox": "support"}) or 0.0


@pytest.mark.timeout(180)
def test_unreadable_files_at_start_middle_and_end_of_a_backlog_stall_nothing(
    dovecot, imap_account, redis_url, tmp_path, monkeypatch
):
    """Before: Dovecot's BYE made the watcher reconnect and fetch the same chunk for ever (0 of 197)."""
    user = imap_account.username
    append_messages(*_imap(imap_account), [make_message(i) for i in range(200)])
    bad = [1, 100, 200]
    make_unreadable(dovecot, user, bad)
    settings = use_config(
        monkeypatch, write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account))
    )
    rq_queue = queue(redis_url)
    failed_registry = FailedJobRegistry(queue=rq_queue)
    before = _unreadable_total()
    with watching(settings):
        started = time.monotonic()
        wait_for(lambda: len(rq_queue) == 197, timeout=60)
        queued = time.monotonic() - started
        wait_for(lambda: failed_registry.count == 3, timeout=60)
        recorded = time.monotonic() - started
        print(f"197 readable queued in {queued:.2f} s, 3 unreadable recorded in {recorded:.2f} s")
        assert count(*_imap(imap_account)) == 3  # left on the server, unmarked
        assert _unreadable_total() == before + 3

        connection = redis.Redis.from_url(redis_url)
        items = list(failed_lib.iter_failed(connection, ["incoming_email"]))
        assert sorted(i.job_id for i in items) == sorted(
            f"support-{_uidvalidity(imap_account)}-{u}" for u in bad
        )
        for item in items:
            assert "Internal error" in item.error and "would not hand" in item.error
            payload = failed_lib.payload(connection, item.job_id)
            assert payload is not None and payload.size > 0 and payload.truncated
            assert history.get(connection, item.job_id).status == "failed"
        ledger = connection.hgetall(poison.failures_key("support"))
        assert sorted(ledger.values()) == [b"recorded"] * 3

        # Fixed on the server, then requeued: the watcher fetches it again at its next catch-up.
        make_readable(dovecot, user, [100])
        middle = f"support-{_uidvalidity(imap_account)}-100"
        failed_lib.requeue(connection, middle)
        append_messages(*_imap(imap_account), [make_message(1000)])  # any new mail starts a catch-up
        wait_for(lambda: middle in rq_queue.job_ids, timeout=30)
        wait_for(lambda: count(*_imap(imap_account)) == 2)
    assert failed_registry.count == 2 and len(rq_queue) == 199


def _uidvalidity(account) -> int:
    from devstack import uidvalidity

    return uidvalidity(*_imap(account))


@pytest.mark.timeout(120)
def test_a_server_that_refuses_one_uid_with_no_stalls_nothing(
    dovecot, imap_account, redis_url, tmp_path, monkeypatch
):
    append_messages(*_imap(imap_account), [make_message(i) for i in range(50)])
    connection = redis.Redis.from_url(redis_url)
    # Two failures counted before a restart: the count lives in Redis, so one more makes three.
    uidvalidity = _uidvalidity(imap_account)
    connection.hset(poison.failures_key("support"), poison.ledger_field(uidvalidity, 20), 2)
    with ImapProxy(dovecot.host, dovecot.port, refuse_fetch={20: GMAIL}) as proxy:
        box = mailbox_config(imap_account, host=proxy.host, port=proxy.port, batch_size=16)
        settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, box))
        rq_queue = queue(redis_url)
        failed_registry = FailedJobRegistry(queue=rq_queue)
        with watching(settings):
            wait_for(lambda: len(rq_queue) == 49 and failed_registry.count == 1, timeout=30)
            refusals = list(proxy.refused)
            time.sleep(1)
            assert proxy.refused == refusals  # recorded: not fetched again
        single = [r for r in refusals if b"UID FETCH 20 (BODY.PEEK[]" in r]
        assert len(single) == 1, refusals
        assert proxy.commands["LOGIN"] == 1  # a NO keeps the session

        # a restart does not fetch it again either
        with watching(settings):
            append_messages(*_imap(imap_account), [make_message(99)])
            wait_for(lambda: len(rq_queue) == 50, timeout=30)
        assert proxy.refused == refusals
    (item,) = list(failed_lib.iter_failed(connection, ["incoming_email"]))
    assert item.job_id == f"support-{uidvalidity}-20" and GMAIL.decode() in item.error
    assert count(*_imap(imap_account)) == 1
