"""Mailbox leases with a real Redis: two in-process replicas share the mailboxes, one at a time each."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from mailroom.lease import LEASE_PREFIX, Coordinator, Lease
from tests.support import wait_for

pytestmark = pytest.mark.integration

MAILBOXES = ["a", "b", "c", "d"]
TTL = 1.5


class Replica:
    """A Coordinator whose 'watchers' are threads that record which mailboxes are watched right now."""

    def __init__(self, connection: redis.Redis, watching: dict[str, list[str]], lock: threading.Lock) -> None:
        self.stop = threading.Event()
        self.coordinator = Coordinator(connection, MAILBOXES, TTL, self.start, self.stop)
        self.watching = watching
        self.lock = lock
        self.thread = threading.Thread(target=self.coordinator.run, daemon=True)

    def start(self, name: str, stop: threading.Event) -> tuple[object, threading.Thread]:
        def watch() -> None:
            with self.lock:
                self.watching.setdefault(name, []).append(self.coordinator.token)
            stop.wait()
            with self.lock:
                self.watching[name].remove(self.coordinator.token)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return name, thread

    def held(self) -> set[str]:
        return set(self.coordinator.held)


def test_two_replicas_split_the_mailboxes_and_take_over_when_one_dies(redis_url):
    connection = redis.Redis.from_url(redis_url)
    watching: dict[str, list[str]] = {}
    lock = threading.Lock()
    one, two = Replica(connection, watching, lock), Replica(connection, watching, lock)
    one.thread.start()
    two.thread.start()
    try:

        def split() -> bool:
            return one.held() | two.held() == set(MAILBOXES) and len(one.held()) == len(two.held()) == 2

        wait_for(split, timeout=15)
        with lock:
            assert all(len(watching[m]) == 1 for m in MAILBOXES)  # exactly one watcher per mailbox
        for _ in range(10):  # stays that way across renewals
            time.sleep(TTL / 5)
            with lock:
                assert all(len(watching.get(m, [])) <= 1 for m in MAILBOXES)

        # Replica one dies without releasing anything: its coordinator stops renewing.
        one_held = one.held()
        died = time.monotonic()
        one.coordinator.shutdown = lambda: None  # type: ignore[method-assign]  # a crash, not a clean stop
        one.coordinator.stop.set()
        one.thread.join(5)
        wait_for(lambda: two.held() == set(MAILBOXES), timeout=TTL * 6)
        print(f"takeover of {sorted(one_held)} after {time.monotonic() - died:.2f} s (ttl {TTL} s)")
        for name in one_held:
            assert Lease(connection, name, "x", TTL).holder() == two.coordinator.token
    finally:
        two.stop.set()
        two.thread.join(5)
        one.stop.set()
    assert not any(connection.exists(LEASE_PREFIX + m) for m in MAILBOXES)  # released on clean stop


def test_lease_renew_and_release_only_by_the_owner(redis_url):
    connection = redis.Redis.from_url(redis_url)
    mine, theirs = Lease(connection, "x", "me", 5), Lease(connection, "x", "them", 5)
    assert mine.acquire() and not theirs.acquire()
    assert mine.renew() and not theirs.renew()
    assert not theirs.release() and mine.holder() == "me"
    assert mine.release() and theirs.acquire()


def test_a_replica_that_joins_later_gets_its_share(redis_url):
    connection = redis.Redis.from_url(redis_url)
    watching: dict[str, list[str]] = {}
    lock = threading.Lock()
    first, late = Replica(connection, watching, lock), Replica(connection, watching, lock)
    first.thread.start()
    try:
        wait_for(lambda: first.held() == set(MAILBOXES), timeout=10)
        late.thread.start()
        wait_for(lambda: len(first.held()) == len(late.held()) == 2, timeout=20)
        with lock:
            assert all(len(watching[m]) == 1 for m in MAILBOXES)
    finally:
        for replica in (first, late):
            replica.stop.set()
            replica.thread.join(5)
