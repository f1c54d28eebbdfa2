"""Scenarios 3 and 4: Redis and Dovecot killed, restarted or unreachable, and a silently cut connection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devstack import RedisServer, append_messages, count
from tests.chaos.harness import (
    Feeder,
    FreezableProxy,
    MailroomProcess,
    batch,
    drain,
    event_counts,
    imap,
    verify,
    wait_for_event,
)
from tests.support import mailbox_config, queue, use_config, wait_for, write_config

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def persistent_redis(tmp_path: Path):
    """A Redis with an append-only file fsynced on every write: the production setup for the promises."""
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.kill()


@pytest.mark.timeout(240)
def test_redis_killed_twice_and_away_longer_than_the_idle_bound(
    imap_account, persistent_redis, tmp_path, monkeypatch
):
    keepalive = 3.0  # the IDLE bound for this test; Redis stays away for over twice as long
    redis_url = persistent_redis.url
    config = write_config(
        tmp_path / "c.yml",
        redis_url,
        mailbox_config(imap_account, batch_size=20, keepalive_interval=keepalive),
    )
    use_config(monkeypatch, config)
    log = tmp_path / "watch.log"
    watcher = MailroomProcess(config, log).start()
    wait_for_event(log, "imap_connected", timeout=60)
    mail = batch("r", 400)
    feeder = Feeder(imap_account, [mail[i : i + 10] for i in range(0, len(mail), 10)], interval=0.25)
    feeder.start()
    faults = 0
    for down in (1.5, 1.5, 2 * keepalive + 1):
        time.sleep(1.5)
        persistent_redis.kill()  # SIGKILL: only what was fsynced survives
        faults += 1
        time.sleep(down)
        persistent_redis.start()
    feeder.join(120)
    returned = time.monotonic()
    wait_for(lambda: count(*imap(imap_account)) == 0, timeout=120, interval=0.2)
    recovered = time.monotonic() - returned
    code, took = watcher.terminate()
    assert code == 0
    drain(redis_url)
    events = event_counts(log)
    outcome = verify(
        "redis-outages",
        feeder.sent,
        redis_url,
        [imap_account],
        faults=faults,
        notes=f"enqueue_failures={events['enqueue_failed']} redelivered={events['message_already_queued']}"
        f" caught_up_after_last_return={recovered:.1f}s sigterm_exit={took:.1f}s",
    )
    assert events["watcher_error"] == 0
    outcome.assert_perfect()


@pytest.mark.timeout(240)
def test_redis_blackholed_longer_than_the_idle_bound(
    imap_account, redis_url, redis_server, tmp_path, monkeypatch
):
    """Redis silently unreachable (connections accepted, nothing answered) for longer than the default
    15 s IDLE bound, in the middle of a drain: each attempt times out, nothing is marked, all flows after."""
    proxy = FreezableProxy(("127.0.0.1", redis_server.port))
    try:
        proxied = f"redis://127.0.0.1:{proxy.port}/0"
        config = write_config(tmp_path / "c.yml", proxied, mailbox_config(imap_account, batch_size=20))
        use_config(monkeypatch, config)
        log = tmp_path / "watch.log"
        watcher = MailroomProcess(config, log).start()
        wait_for_event(log, "imap_connected", timeout=60)
        sent = batch("h", 300)
        append_messages(*imap(imap_account), sent)
        wait_for(lambda: len(queue(redis_url)) >= 60, timeout=60, interval=0.01)
        proxy.blackhole()
        more = batch("m", 50, start=300)
        append_messages(*imap(imap_account), more)
        sent += more
        time.sleep(20)
        stalled = len(queue(redis_url))
        proxy.reopen()
        reopened = time.monotonic()
        wait_for(lambda: count(*imap(imap_account)) == 0, timeout=120, interval=0.2)
        recovered = time.monotonic() - reopened
        code, took = watcher.terminate()
        assert code == 0
    finally:
        proxy.close()
    monkeypatch.setenv("MAILROOM_REDIS_URL", redis_url)  # the in-process worker skips the proxy
    use_config(monkeypatch, config)
    drain(redis_url)
    events = event_counts(log)
    outcome = verify(
        "redis-blackhole",
        sent,
        redis_url,
        [imap_account],
        faults=1,
        notes=f"queued_when_reopened={stalled} enqueue_failures={events['enqueue_failed']}"
        f" caught_up_after_reopen={recovered:.1f}s sigterm_exit={took:.1f}s",
    )
    assert events["watcher_error"] == 0
    outcome.assert_perfect()


@pytest.mark.timeout(240)
def test_dovecot_restarted_mid_idle_mid_fetch_and_down_at_reconnect(
    make_dovecot, redis_url, tmp_path, monkeypatch
):
    dovecot = make_dovecot()
    account = dovecot.add_user("chaos", "secret")
    config = write_config(tmp_path / "c.yml", redis_url, mailbox_config(account, batch_size=50))
    use_config(monkeypatch, config)
    log = tmp_path / "watch.log"
    watcher = MailroomProcess(config, log).start()
    connected = wait_for_event(log, "imap_connected", timeout=60)
    sent: list[bytes] = []

    # mid-IDLE: a graceful restart (Dovecot says BYE), then new mail
    time.sleep(1.0)
    dovecot.restart()
    first = batch("i", 20)
    append_messages(*imap(account), first)
    sent += first
    connected = wait_for_event(log, "imap_connected", after=connected, timeout=60)
    wait_for(lambda: count(*imap(account)) == 0, timeout=60, interval=0.2)

    # mid-FETCH: SIGKILL the whole server while a 1,000-message backlog drains
    backlog = batch("f", 1000)
    append_messages(*imap(account), backlog)
    sent += backlog
    wait_for(lambda: len(queue(redis_url)) >= 200, timeout=60, interval=0.01)
    dovecot.kill()
    dovecot.start()
    connected = wait_for_event(log, "imap_connected", after=connected, timeout=60)
    wait_for(lambda: count(*imap(account)) == 0, timeout=120, interval=0.2)

    # down when the watcher first tries to reconnect; mail delivered (by the MTA) while it is down
    dovecot.stop()
    time.sleep(4.0)
    offline = batch("d", 30)
    dovecot.deliver_files(account.username, offline)
    sent += offline
    dovecot.start()
    wait_for_event(log, "imap_connected", after=connected, timeout=60)
    wait_for(lambda: count(*imap(account)) == 0, timeout=60, interval=0.2)

    code, took = watcher.terminate()
    assert code == 0
    drain(redis_url)
    events = event_counts(log)
    outcome = verify(
        "dovecot-restarts",
        sent,
        redis_url,
        [account],
        faults=3,
        notes=f"reconnect_failures={events['imap_connection_failed']}"
        f" redelivered={events['message_already_queued']} sigterm_exit={took:.1f}s",
    )
    assert events["watcher_error"] == 0
    outcome.assert_perfect()


@pytest.mark.timeout(180)
def test_silently_cut_connection_is_noticed_with_default_settings(
    dovecot, imap_account, redis_url, tmp_path, monkeypatch
):
    """No FIN, no RST: the proxy stops forwarding while the kernel keeps ACKing. Default settings
    (keepalive_interval 15 s, DONE answered within 5 s) must notice and deliver within 30 s."""
    proxy = FreezableProxy((imap_account.host, imap_account.port))
    try:
        mailbox = mailbox_config(imap_account, port=proxy.port)
        assert "keepalive_interval" not in mailbox  # the defaults are what is under test
        config = write_config(tmp_path / "c.yml", redis_url, mailbox)
        use_config(monkeypatch, config)
        log = tmp_path / "watch.log"
        watcher = MailroomProcess(config, log).start()
        wait_for_event(log, "imap_connected", timeout=60)
        # Wait for two IDLE commands: the commands between them are one keepalive cycle's cost. Freezing
        # right after a renewal is the worst moment: the next renewal is a whole interval away.
        idles = wait_for(lambda: _idle_commands(proxy, 2), timeout=60, interval=0.05)
        cycle = [line for at, line in proxy.client_lines if idles[0] < at <= idles[1]]
        interval = idles[1] - idles[0]
        proxy.freeze()
        frozen_at = time.monotonic()
        cut = batch("s", 5)
        append_messages(*imap(imap_account), cut)
        wait_for(lambda: count(*imap(imap_account)) == 0, timeout=60, interval=0.1)
        recovery = time.monotonic() - frozen_at
        code, took = watcher.terminate()
        assert code == 0
    finally:
        proxy.close()
    drain(redis_url)
    per_minute = len(cycle) * 60 / interval
    outcome = verify(
        "silent-cut",
        cut,
        redis_url,
        [imap_account],
        faults=1,
        notes=f"recovered_in={recovery:.1f}s idle_cost={len(cycle)} commands per {interval:.0f}s"
        f" (~{per_minute:.0f}/min: {b' | '.join(cycle)!r}) sigterm_exit={took:.1f}s",
    )
    outcome.assert_perfect()


def _idle_commands(proxy: FreezableProxy, n: int) -> list[float] | None:
    times = [at for at, line in proxy.client_lines if line.upper().endswith(b" IDLE")]
    return times[:n] if len(times) >= n else None


@pytest.mark.timeout(120)
def test_sigterm_stops_the_watcher_within_ten_seconds_even_when_stuck(
    imap_account, make_redis, tmp_path, monkeypatch
):
    """SIGTERM at the two worst moments: Redis away (the watcher is backing off) and the IMAP link frozen
    mid-IDLE (DONE will never be answered). Exit 0, and print how long each took."""
    private = make_redis()
    proxy = FreezableProxy((imap_account.host, imap_account.port))
    took = {}
    try:
        config = write_config(tmp_path / "c.yml", private.url, mailbox_config(imap_account, port=proxy.port))
        use_config(monkeypatch, config)
        log = tmp_path / "watch.log"

        watcher = MailroomProcess(config, log).start()
        wait_for_event(log, "imap_connected", timeout=60)
        private.stop()
        append_messages(*imap(imap_account), batch("t", 3))
        wait_for_event(log, "enqueue_failed", timeout=30)
        code, took["redis_away"] = watcher.terminate()
        assert code == 0
        private.start()

        connected = event_counts(log)["imap_connected"]
        watcher = MailroomProcess(config, log).start()
        wait_for_event(log, "imap_connected", after=connected, timeout=60)
        wait_for(lambda: count(*imap(imap_account)) == 0, timeout=30)
        time.sleep(1.0)  # in IDLE now
        proxy.freeze()
        code, took["link_frozen"] = watcher.terminate()
        assert code == 0
    finally:
        proxy.close()
    # exit 0 means every watcher thread finished within the 8 s grace
    print("\nchaos sigterm: " + " ".join(f"{name}={seconds:.1f}s" for name, seconds in took.items()))
