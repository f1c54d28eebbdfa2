"""Redis settings that lose mail (issue 10 part 4), against real redis-server processes: an evicting
maxmemory-policy is a ✗ in `check` and refuses `watch`; persistence off is a ! warning; with a replica,
each enqueue WAITs for its acknowledgement, and a short count leaves the batch unmarked on Dovecot until
the replica is back, then it is delivered exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import structlog.testing
from click.testing import CliRunner

from devstack import RedisServer, append_messages, count, make_message
from mailroom.cli import cli
from mailroom.config import load_settings
from mailroom.errors import EnqueueError
from mailroom.queue import MailQueue
from mailroom.redis_client import connect
from mailroom.redis_safety import refusal_at_start
from mailroom.schema import JobPayload
from tests.support import (
    handled,
    mailbox_config,
    queue,
    run_worker,
    use_config,
    wait_for,
    watching,
    write_config,
)

pytestmark = pytest.mark.integration

MakeRedis = Callable[..., RedisServer]
MAILBOX = {"name": "support", "host": "127.0.0.1", "username": "u", "password": "p"}


def _check(tmp_path: Path, url: str, **top: object) -> tuple[int, list[str]]:
    config = write_config(tmp_path / "c.yml", url, **top)
    result = CliRunner().invoke(cli, ["--config", str(config), "check"])
    return result.exit_code, result.stdout.splitlines()


def _line(lines: list[str], name: str) -> str:
    (line,) = [line for line in lines if line[2:].startswith(f"{name}:")]
    return line


@pytest.mark.parametrize(("policy", "what"), [("allkeys-lru", "queued jobs"), ("volatile-lru", "guard keys")])
def test_check_fails_on_an_evicting_redis(
    make_redis: MakeRedis, tmp_path: Path, policy: str, what: str
) -> None:
    server = make_redis(args=["--maxmemory-policy", policy])
    code, lines = _check(tmp_path, server.url)
    assert code == 1
    line = _line(lines, "redis:eviction")
    assert line.startswith(f"✗ redis:eviction: maxmemory-policy is {policy}: ")
    assert what in line and "set maxmemory-policy noeviction" in line


def test_check_warns_when_persistence_is_off(make_redis: MakeRedis, tmp_path: Path) -> None:
    off = make_redis()  # --appendonly no, --save ""
    _, lines = _check(tmp_path, off.url)
    assert _line(lines, "redis:eviction").startswith("✓ redis:eviction: maxmemory-policy noeviction")
    line = _line(lines, "redis:persistence")
    assert line.startswith("! redis:persistence: persistence off (no AOF")
    assert "loses queued jobs whose messages are already marked done" in line

    lazy = make_redis(args=["--appendonly", "yes", "--appendfsync", "no"])
    _, lines = _check(tmp_path, lazy.url)
    assert _line(lines, "redis:persistence").startswith("! redis:persistence: appendfsync no: ")

    durable = make_redis(persistent=True)  # appendonly yes, appendfsync always
    _, lines = _check(tmp_path, durable.url)
    assert _line(lines, "redis:persistence") == "✓ redis:persistence: AOF on, appendfsync always"
    assert _line(lines, "redis:replicas").startswith(
        "✓ redis:replicas: 0 connected; each enqueue waits for 0"
    )


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_watch_refuses_an_evicting_redis(make_redis: MakeRedis, tmp_path: Path, policy: str) -> None:
    server = make_redis(args=["--maxmemory-policy", policy])
    mailbox = {"name": "support", "host": "127.0.0.1", "username": "u", "password": "p"}
    config = write_config(tmp_path / "c.yml", server.url, mailbox)
    result = CliRunner().invoke(cli, ["--config", str(config), "watch"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("redis error:")]
    assert len(errors) == 1 and errors[0].startswith(f"redis error: maxmemory-policy is {policy}: "), (
        result.output
    )


def test_an_evicting_redis_is_refused_at_the_first_enqueue(make_redis: MakeRedis, tmp_path: Path) -> None:
    """For a watcher that started while Redis was away (so watch could not check it), and for inject."""
    server = make_redis(args=["--maxmemory-policy", "volatile-lru"])
    settings = load_settings(write_config(tmp_path / "c.yml", server.url, MAILBOX))
    mail = MailQueue(connect(server.url), settings)
    for _ in range(2):  # refused at every attempt, not only the first
        with pytest.raises(EnqueueError, match="refusing to queue mail: maxmemory-policy is volatile-lru"):
            mail.enqueue_batch(settings.mailboxes[0], [_payload(1)])
    assert server.client().dbsize() == 0
    server.client().config_set("maxmemory-policy", "noeviction")
    assert [r.new for r in mail.enqueue_batch(settings.mailboxes[0], [_payload(1)])] == [True]


def _replicated(make_redis: MakeRedis) -> tuple[RedisServer, RedisServer]:
    primary = make_redis()
    replica = make_redis(replica_of=primary)
    _wait_linked(primary, replica)
    return primary, replica


def _wait_linked(primary: RedisServer, replica: RedisServer) -> None:
    wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up")
    wait_for(lambda: primary.client().info("replication").get("connected_slaves") == 1)


def _payload(uid: int) -> JobPayload:
    return JobPayload(
        mailbox="support",
        source="imap",
        uidvalidity=1,
        uid=uid,
        received_at="2026-01-01T00:00:00+00:00",
        size=3,
        truncated=False,
        message_id=f"<{uid}@example.com>",
        key=None,
        key_header=None,
        from_address=None,
        subject=None,
        auto_reply=False,
        bounce=False,
        parse_error=None,
        raw=b"abc",
    )


def test_a_short_replica_count_is_an_enqueue_failure(make_redis: MakeRedis, tmp_path: Path) -> None:
    primary, replica = _replicated(make_redis)
    settings = load_settings(write_config(tmp_path / "c.yml", primary.url, redis_replica_ack_timeout=0.5))
    (mailbox,) = load_settings(
        write_config(
            tmp_path / "m.yml",
            primary.url,
            {"name": "support", "host": "h", "username": "u", "password": "p"},
        )
    ).mailboxes
    mail = MailQueue(connect(primary.url), settings)
    assert [r.new for r in mail.enqueue_batch(mailbox, [_payload(1)])] == [True]
    assert mail.replica_acks() == 1  # a replica was connected: the default is to wait for it
    assert replica.client().llen("rq:queue:incoming_email") == 1  # WAIT returned: the replica has it

    replica.pause()
    try:
        started = time.monotonic()
        with pytest.raises(EnqueueError, match=r"only 0 of 1 Redis replica\(s\) acknowledged"):
            mail.enqueue_batch(mailbox, [_payload(2), _payload(3)])
        assert time.monotonic() - started < 5
        # the retry while the replica is still away fails the same way, and writes nothing twice
        with pytest.raises(EnqueueError):
            mail.enqueue_batch(mailbox, [_payload(2), _payload(3)])
    finally:
        replica.resume()
    results = mail.enqueue_batch(mailbox, [_payload(2), _payload(3)])
    assert [r.new for r in results] == [False, False]  # the guards: queued once, by the first attempt
    assert primary.client().llen("rq:queue:incoming_email") == 3
    wait_for(lambda: replica.client().llen("rq:queue:incoming_email") == 3)


def _imap(account):
    return (account.host, account.port, account.username, account.password)


@pytest.mark.parametrize("outage", ["paused", "killed"])
def test_watcher_leaves_mail_unmarked_until_the_replica_acknowledges(
    imap_account, make_redis: MakeRedis, tmp_path: Path, monkeypatch, outage: str
) -> None:
    primary, replica = _replicated(make_redis)
    # killed: the primary sees no replica any more, so the count must come from the setting
    acks = {"redis_min_replica_acks": 1} if outage == "killed" else {}
    config = write_config(
        tmp_path / "c.yml", primary.url, mailbox_config(imap_account), redis_replica_ack_timeout=0.5, **acks
    )
    settings = use_config(monkeypatch, config)
    with watching(settings):
        append_messages(*_imap(imap_account), [make_message(100)])
        wait_for(lambda: count(*_imap(imap_account)) == 0)  # replica up: delivered and marked
        if outage == "paused":
            replica.pause()
        else:
            replica.kill()
        try:
            append_messages(*_imap(imap_account), [make_message(i) for i in range(5)])
            time.sleep(4)
            assert count(*_imap(imap_account)) == 5  # WAIT came up short: nothing marked
        finally:
            if outage == "paused":
                replica.resume()
            else:
                replica.start()  # empty: it resyncs from the primary
        wait_for(lambda: count(*_imap(imap_account)) == 0, timeout=60)
    assert len(queue(primary.url)) == 6
    run_worker(primary.url)
    records = handled(primary.url)
    assert len(records) == 6 and len(set(records)) == 6  # every message once, none twice
    assert redis.Redis.from_url(primary.url).llen("rq:queue:incoming_email") == 0


def test_check_shows_what_would_stop_a_process_at_start(redis_url: str, tmp_path: Path) -> None:
    """`check` answers "is it working?": an empty secret or a handler that cannot be imported would
    fail every message, so check-config's start checks are ✗ lines here too."""
    _, lines = _check(tmp_path, redis_url)
    assert "✓ config: valid, 0 mailbox(es)" in lines
    (tmp_path / "key").write_text("")
    code, lines = _check(tmp_path, redis_url, provider={"signing_key_file": str(tmp_path / "key")})
    assert code == 1
    assert f"✗ config: provider.signing_key_file: {tmp_path / 'key'} is empty" in lines


def test_watch_start_warns_when_persistence_is_off(make_redis: MakeRedis, tmp_path: Path) -> None:
    server = make_redis()  # --appendonly no
    settings = load_settings(write_config(tmp_path / "c.yml", server.url))
    with structlog.testing.capture_logs() as logs:
        assert refusal_at_start(connect(server.url), settings) is None
    events = {entry["event"]: entry for entry in logs}
    assert "restart loses queued jobs" in events["redis_persistence_off"]["detail"]
    assert events["redis_checked"]["maxmemory_policy"] == "noeviction"
    assert events["redis_checked"]["replica_acks"] == 0


def test_unreachable_redis_is_not_refused_at_start(tmp_path: Path) -> None:
    """The watcher waits for a Redis that is away (it checks before its first write instead)."""
    settings = load_settings(write_config(tmp_path / "c.yml", "redis://127.0.0.1:1/0"))
    with structlog.testing.capture_logs() as logs:
        assert refusal_at_start(connect(settings.redis_url), settings) is None
    assert [entry["event"] for entry in logs] == ["redis_settings_unknown"]


def test_a_retry_on_another_connection_still_waits_for_the_replica(
    make_redis: MakeRedis, tmp_path: Path
) -> None:
    """The retry of a short batch writes no job (the guards exist): it must still WAIT for the first
    attempt's writes, even from a pooled connection that has never written anything. (Redis 7.0 moves a
    connection's WAIT offset on every command, so there this holds even without the barrier write; the
    barrier is for servers that move it only on propagated writes, where WAIT would answer at once.)"""
    primary, replica = _replicated(make_redis)
    acks = {"redis_replica_ack_timeout": 0.5, "redis_min_replica_acks": 1, "history_ttl": 0}
    settings = load_settings(write_config(tmp_path / "c.yml", primary.url, **acks))
    (mailbox,) = load_settings(
        write_config(
            tmp_path / "m.yml",
            primary.url,
            {"name": "support", "host": "h", "username": "u", "password": "p"},
        )
    ).mailboxes
    replica.pause()
    try:
        with pytest.raises(EnqueueError):
            MailQueue(connect(primary.url), settings).enqueue_batch(mailbox, [_payload(1)])
        fresh = MailQueue(connect(primary.url), settings)  # a new client: a connection that never wrote
        with pytest.raises(EnqueueError, match=r"only 0 of 1"):
            fresh.enqueue_batch(mailbox, [_payload(1)])
    finally:
        replica.resume()
    assert [r.new for r in fresh.enqueue_batch(mailbox, [_payload(1)])] == [False]
    wait_for(lambda: replica.client().llen("rq:queue:incoming_email") == 1)
