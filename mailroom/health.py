"""Liveness and readiness of one process, as data the HTTP server (mailroom.web) serves.

- watcher ``/healthz``: every watcher thread turned its loop recently. A thread stuck in IDLE (or in a
  command) past its bound is unhealthy: the bound is the longest a healthy loop waits between turns
  (the IDLE cycle or poll interval, or the reconnect backoff cap) plus the command timeout and a margin.
- watcher ``/readyz``: every watcher is logged in to its mailbox (the check is ``<kind>:<name>``:
  ``imap:support``, ``graph:cloud``), and Redis answers PING.
- worker ``/healthz``: the RQ worker loop sent a heartbeat recently; ``/readyz``: Redis answers PING.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from redis.exceptions import RedisError

from mailroom.config import MailboxConfig
from mailroom.source import Backoff, WatcherStatus

MARGIN_SECONDS = 30.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Report:
    checks: Sequence[Check] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


class Probe(Protocol):
    def liveness(self) -> Report: ...
    def readiness(self) -> Report: ...


def redis_check(connection: redis.Redis) -> Check:
    try:
        connection.ping()
    except RedisError as exc:
        return Check("redis", False, f"{type(exc).__name__}: {exc}")
    return Check("redis", True, "PING answered")


def turn_bound(config: MailboxConfig, done_timeout: float = 5.0) -> float:
    """The longest a healthy watcher loop goes between two turns, plus a margin."""
    wait = max(config.max_wait + done_timeout, Backoff().cap)
    return wait + config.timeout + MARGIN_SECONDS


@dataclass(frozen=True)
class WatchedMailbox:
    config: MailboxConfig
    status: WatcherStatus


class WatcherProbe:
    """``watched`` returns the mailboxes this process watches now (with leases, that changes)."""

    def __init__(
        self,
        watched: Callable[[], Sequence[WatchedMailbox]],
        connection: redis.Redis,
        extra_liveness: Callable[[], Sequence[Check]] = lambda: (),
    ) -> None:
        self.watched = watched
        self.connection = connection
        self.extra_liveness = extra_liveness

    def liveness(self) -> Report:
        now = time.monotonic()
        checks = []
        for item in self.watched():
            age = now - item.status.last_turn
            bound = turn_bound(item.config)
            ok = age <= bound
            checks.append(
                Check(f"watcher:{item.config.name}", ok, f"last turn {age:.0f} s ago (bound {bound:.0f} s)")
            )
        checks.extend(self.extra_liveness())
        return Report(tuple(checks))

    def readiness(self) -> Report:
        checks = []
        for item in self.watched():
            status = item.status
            detail = "logged in" if status.connected else f"not connected: {status.last_error or 'starting'}"
            checks.append(Check(f"{item.config.kind}:{item.config.name}", status.connected, detail))
        checks.append(redis_check(self.connection))
        return Report(tuple(checks))


class WorkerProbe:
    """``heartbeat_age`` gives the seconds since the RQ worker loop's last heartbeat (None: not yet)."""

    def __init__(
        self, heartbeat_age: Callable[[], float | None], connection: redis.Redis, bound: float, started: float
    ) -> None:
        self.heartbeat_age = heartbeat_age
        self.connection = connection
        self.bound = bound
        self.started = started

    def liveness(self) -> Report:
        age = self.heartbeat_age()
        if age is None:
            waited = time.monotonic() - self.started
            ok = waited <= self.bound
            return Report((Check("worker", ok, f"no heartbeat yet, {waited:.0f} s after start"),))
        ok = age <= self.bound
        return Report((Check("worker", ok, f"last heartbeat {age:.0f} s ago (bound {self.bound:.0f} s)"),))

    def readiness(self) -> Report:
        return Report((redis_check(self.connection),))
