"""Renewable Redis leases: with several watcher replicas, each mailbox is watched by one at a time.

``mailroom:lease:<mailbox>`` holds a random owner token (``SET NX PX ttl``). The holder renews it every
ttl/3 with a compare-and-expire script and deletes it (compare-and-delete) on a clean stop; a replica that
dies or is cut off from Redis stops renewing, and another takes the mailbox over within the TTL.
A replica that cannot renew a lease stops watching that mailbox before the lease can have expired.
A lease is released only once its watcher thread has exited: a watcher still finishing a batch when it
is told to stop keeps the lease renewed (``stopping``) until it is gone, so a handover never leaves two
replicas watching one mailbox; one that has not exited by shutdown leaves its lease to expire.

Spreading: each replica announces itself in ``mailroom:replicas`` (a sorted set scored by expiry) and holds
at most ceil(mailboxes / replicas alive) leases, so N replicas share the mailboxes instead of the first
one taking them all; a replica over its share (another one joined) hands one mailbox over per round.
The idempotent enqueue guard stays the safety net for the moments of overlap.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis
import structlog
from redis.exceptions import RedisError

from mailroom import metrics
from mailroom.stopping import StopEvent

LEASE_PREFIX = "mailroom:lease:"
REPLICAS_KEY = "mailroom:replicas"

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

log = structlog.get_logger("mailroom.lease")


class Lease:
    """One mailbox's lease, as seen by one replica (owner ``token``)."""

    def __init__(self, connection: redis.Redis, mailbox: str, token: str, ttl: float) -> None:
        self.connection = connection
        self.key = LEASE_PREFIX + mailbox
        self.token = token
        self.ttl_ms = max(1, int(ttl * 1000))
        self.valid_until = 0.0  # monotonic: we may act as holder until then

    def acquire(self) -> bool:
        started = time.monotonic()
        if self.connection.set(self.key, self.token, nx=True, px=self.ttl_ms):
            self.valid_until = started + self.ttl_ms / 1000
            return True
        return False

    def renew(self) -> bool:
        started = time.monotonic()
        if self.connection.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
            self.valid_until = started + self.ttl_ms / 1000
            return True
        return False

    def release(self) -> bool:
        self.valid_until = 0.0
        return bool(self.connection.eval(_RELEASE, 1, self.key, self.token))

    def holder(self) -> str | None:
        value = self.connection.get(self.key)
        return value.decode() if isinstance(value, bytes) else None


@dataclass
class _Held:
    lease: Lease
    stop: threading.Event
    thread: threading.Thread
    handle: object


@dataclass
class Coordinator:
    """Holds leases for a share of ``mailboxes`` and runs ``start(name, stop_event)`` for each one held.

    ``start`` returns (a handle, the thread it started); the thread must end soon after its stop event
    is set. ``run`` loops until ``stop`` is set, then stops every watcher and releases every lease.
    """

    connection: redis.Redis
    mailboxes: Sequence[str]
    ttl: float
    start: Callable[[str, threading.Event], tuple[object, threading.Thread]]
    stop: threading.Event
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    held: dict[str, _Held] = field(default_factory=dict)
    # Told to stop, thread not yet exited: the lease stays ours (renewed) until it has.
    stopping: dict[str, _Held] = field(default_factory=dict)
    last_turn: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def interval(self) -> float:
        return self.ttl / 3

    def handles(self) -> list[object]:
        with self._lock:
            return [h.handle for h in self.held.values()]

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.last_turn = time.monotonic()
                try:
                    self.tick()
                except Exception:  # one bad round (a watcher that failed to start) must not stop them all
                    log.exception("lease_round_failed")
                self.stop.wait(self.interval)
        finally:
            self.shutdown()

    def tick(self) -> None:
        """One round: announce, renew (drop what we lost), then take free mailboxes up to our share."""
        try:
            alive = self._announce()
        except RedisError as exc:
            log.warning("lease_redis_error", error=str(exc))
            alive = None
        self._renew_all()
        self._reap()
        if alive is None:
            return
        share = math.ceil(len(self.mailboxes) / max(1, alive))
        if len(self.held) > share:
            # A replica joined: hand one mailbox over per round (the newcomer takes it), so the
            # mailboxes spread without every one of them changing hands at once.
            name = sorted(self.held)[-1]
            log.info("lease_handed_over", mailbox=name, held=len(self.held), share=share)
            self._end(name, release=True)
            return
        free = [m for m in self.mailboxes if m not in self.held and m not in self.stopping]
        random.shuffle(free)  # replicas starting together do not all race for the same one first
        for name in free:
            if len(self.held) >= share or self.stop.is_set():
                break
            lease = Lease(self.connection, name, self.token, self.ttl)
            try:
                acquired = lease.acquire()
            except RedisError:
                return
            if acquired:
                self._begin(name, lease)
        metrics.MAILBOXES_WATCHED.set(len(self.held))

    def _announce(self) -> int:
        now = time.time()
        with self.connection.pipeline() as pipe:
            pipe.zadd(REPLICAS_KEY, {self.token: now + self.ttl})
            pipe.zremrangebyscore(REPLICAS_KEY, "-inf", now)
            pipe.zcard(REPLICAS_KEY)
            results = pipe.execute()
        return int(results[-1])

    def _renew_all(self) -> None:
        for name, held in list(self.held.items()):
            try:
                kept = held.lease.renew()
            except RedisError:
                # Unknown: keep watching while the lease is surely still ours, not a moment longer.
                kept = time.monotonic() < held.lease.valid_until - self.interval
            if not kept:
                log.warning("lease_lost", mailbox=name)
                self._end(name, release=False)

    def _begin(self, name: str, lease: Lease) -> None:
        stop = StopEvent()
        handle, thread = self.start(name, stop)
        with self._lock:
            self.held[name] = _Held(lease, stop, thread, handle)
        log.info("lease_acquired", mailbox=name)

    def _end(self, name: str, release: bool) -> None:
        """Stop the mailbox's watcher. With ``release``, the lease is released once the thread has
        exited: now if it does within a short wait, else in a later round (renewed meanwhile)."""
        with self._lock:
            held = self.held.pop(name)
        held.stop.set()
        held.thread.join(min(1.0, self.interval))
        if release:
            self.stopping[name] = held
            self._reap()
        metrics.MAILBOXES_WATCHED.set(len(self.held))

    def _reap(self) -> None:
        """Release the leases of watchers that have exited; renew those of watchers still stopping."""
        self._release_exited()
        for name, held in list(self.stopping.items()):
            try:
                if not held.lease.renew():
                    log.warning("lease_lost_while_stopping", mailbox=name)
                    del self.stopping[name]
            except RedisError:
                pass  # unknown: retried next round; if Redis stays away the lease expires meanwhile

    def _release_exited(self) -> None:
        for name, held in list(self.stopping.items()):
            if held.thread.is_alive():
                continue
            del self.stopping[name]
            try:
                held.lease.release()
            except RedisError:
                pass  # it expires by itself within the TTL

    def shutdown(self) -> None:
        for held in list(self.held.values()):
            held.stop.set()
        for name in list(self.held):
            self._end(name, release=True)
        # Until every watcher has exited, its lease stays ours: if the process is killed meanwhile, the
        # renewals stop with it and the lease expires after the watcher has gone.
        renewed = time.monotonic()
        while self.stopping:
            time.sleep(0.05)
            if time.monotonic() - renewed >= self.interval:
                self._reap()
                renewed = time.monotonic()
            else:
                self._release_exited()
        try:
            self.connection.zrem(REPLICAS_KEY, self.token)
        except RedisError:
            pass
        log.info("leases_released")
