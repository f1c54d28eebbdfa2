"""Unreadable messages: one message the server will not hand over must not stall its mailbox.

When the FETCH of a chunk fails (Dovecot says ``BYE Internal error`` for a message file it cannot read,
Gmail ``NO Some messages could not be FETCHed``, Exchange a "message corrupt" NO), the chunk becomes a
*suspect* (:class:`Suspects`): it is fetched again in halves, and halves of halves, down to single
messages, while everything outside it flows on, so every readable message goes through.

A single message that fails counts one failure in Redis (:class:`FailureLedger`, the hash
``mailroom:fetch_failures:<mailbox>``, so a restart does not reset it). At ``max_failures`` (3) it becomes
a *failed message*: recorded in the failed registry and the history with its UID, size, its header if the
server gives it and the server's words (mailroom.queue.MailQueue.record_unreadable), counted in
``mailroom_messages_unreadable_total``, left on the server unmarked, and skipped from then on. ``mailroom
requeue`` of it (mailroom.failed.requeue) clears its count, so the watcher's next catch-up fetches it again.

Nothing here knows IMAP: a message is (generation, id), IMAP's (UIDVALIDITY, UID).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable
from typing import Protocol

import redis
from redis.exceptions import RedisError

from mailroom.errors import EnqueueError

FAILURES_PREFIX = "mailroom:fetch_failures:"
RECORDED = "recorded"  # a ledger value: the failed record is written, the message is skipped
DEFAULT_MAX_FAILURES = 3


def failures_key(mailbox: str) -> str:
    return FAILURES_PREFIX + mailbox


def ledger_field(generation: int | None, uid: int | str) -> str:
    return f"{generation if generation is not None else ''}:{uid}"


class Suspects:
    """Groups of ids known to hold a message the server would not hand over, fetched one group at a time:
    a group that fails again is split in halves (the first half next); a single id that fails goes to the
    back, so the others are tried first."""

    def __init__(self) -> None:
        self._groups: deque[tuple[int, ...]] = deque()

    def __bool__(self) -> bool:
        return bool(self._groups)

    def __contains__(self, uid: int) -> bool:
        return any(uid in group for group in self._groups)

    def ids(self) -> set[int]:
        return {uid for group in self._groups for uid in group}

    def failed(self, uids: Iterable[int]) -> None:
        group = tuple(sorted(set(uids)))
        self.drop(group)
        if len(group) > 1:
            middle = len(group) // 2
            self._groups.appendleft(group[middle:])
            self._groups.appendleft(group[:middle])
        elif group:
            self._groups.append(group)

    def drop(self, uids: Collection[int]) -> None:
        """Forget ``uids`` (delivered, recorded, or gone from the server)."""
        kept = (tuple(uid for uid in group if uid not in uids) for group in self._groups)
        self._groups = deque(group for group in kept if group)

    def next_group(self, pending: Collection[int]) -> tuple[int, ...] | None:
        """The first group, without the ids no longer pending; None when there is none."""
        while self._groups:
            group = tuple(uid for uid in self._groups[0] if uid in pending)
            if group:
                self._groups[0] = group
                return group
            self._groups.popleft()
        return None

    def clear(self) -> None:
        self._groups.clear()


class Ledger(Protocol):
    max_failures: int

    def count(self, generation: int | None, uid: int) -> int: ...
    def recorded(self, generation: int | None) -> set[int]: ...
    def mark_recorded(self, generation: int | None, uid: int) -> None: ...
    def forget(self, generation: int | None, uids: Iterable[int]) -> None: ...


class MemoryLedger:
    """A ledger that forgets on restart: for a watcher without Redis (unit tests)."""

    def __init__(self, max_failures: int = DEFAULT_MAX_FAILURES) -> None:
        self.max_failures = max_failures
        self.entries: dict[str, int | str] = {}

    def count(self, generation: int | None, uid: int) -> int:
        name = ledger_field(generation, uid)
        value = self.entries.get(name, 0)
        self.entries[name] = (value if isinstance(value, int) else 0) + 1
        return int(self.entries[name])

    def recorded(self, generation: int | None) -> set[int]:
        prefix = ledger_field(generation, "")
        return {
            int(name[len(prefix) :])
            for name, value in self.entries.items()
            if value == RECORDED and name.startswith(prefix)
        }

    def mark_recorded(self, generation: int | None, uid: int) -> None:
        self.entries[ledger_field(generation, uid)] = RECORDED

    def forget(self, generation: int | None, uids: Iterable[int]) -> None:
        for uid in uids:
            self.entries.pop(ledger_field(generation, uid), None)


class FailureLedger:
    """One mailbox's fetch failures in Redis: ``<generation>:<id>`` -> count, or ``recorded``."""

    def __init__(
        self, connection: redis.Redis, mailbox: str, max_failures: int = DEFAULT_MAX_FAILURES
    ) -> None:
        self.connection = connection
        self.key = failures_key(mailbox)
        self.max_failures = max_failures

    def count(self, generation: int | None, uid: int) -> int:
        """One more failure of a single message; how many it has had (restarts included)."""
        try:
            return int(self.connection.hincrby(self.key, ledger_field(generation, uid), 1))
        except RedisError as exc:
            raise EnqueueError(f"Redis did not count the fetch failure: {exc}") from exc

    def recorded(self, generation: int | None) -> set[int]:
        """The ids of this generation whose failed record is written: skipped by the watcher."""
        try:
            entries = self.connection.hgetall(self.key)
        except RedisError as exc:
            raise EnqueueError(f"Redis did not answer: {exc}") from exc
        prefix = ledger_field(generation, "")
        skipped: set[int] = set()
        for name, value in entries.items():
            text = name.decode() if isinstance(name, bytes) else str(name)
            uid = text[len(prefix) :]
            if value in (RECORDED, RECORDED.encode()) and text.startswith(prefix) and uid.isdigit():
                skipped.add(int(uid))
        return skipped

    def mark_recorded(self, generation: int | None, uid: int) -> None:
        try:
            self.connection.hset(self.key, ledger_field(generation, uid), RECORDED)
        except RedisError as exc:
            raise EnqueueError(f"Redis did not take the failed mark: {exc}") from exc

    def forget(self, generation: int | None, uids: Iterable[int]) -> None:
        """The messages were fetched after all: their failures no longer count."""
        fields = [ledger_field(generation, uid) for uid in uids]
        if not fields:
            return
        try:
            self.connection.hdel(self.key, *fields)
        except RedisError as exc:
            raise EnqueueError(f"Redis did not clear the fetch failures: {exc}") from exc


def forget_failed(connection: redis.Redis, mailbox: str, generation: int | None, uid: int | str) -> None:
    """``mailroom requeue`` of a failed message: its next fetch starts from zero failures."""
    connection.hdel(failures_key(mailbox), ledger_field(generation, uid))
