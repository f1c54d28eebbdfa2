"""Failed mail: list, inspect, export and requeue the jobs in RQ's failed registries.

The library behind ``mailroom failed ...`` and ``mailroom requeue``. A failed job keeps its JSON payload
(``job.args[0]``, the raw message base64-encoded) for ``failure_ttl`` seconds; requeueing moves it back
to its own queue with its data untouched (RQ's ``FailedJobRegistry.requeue``, which removes it from the
registry atomically, so two operators or two runs never requeue one job twice).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from mailroom import history
from mailroom.schema import JobPayload, PayloadError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class NotFailed(LookupError):
    """The job is not (or no longer) in a failed registry."""


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``2h``, ``30m``, ``7d`` (ago) or an ISO 8601 time (UTC when it has no offset)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration like 2h, 30m, 7d nor an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class FailedMessage:
    job_id: str
    queue: str
    payload: JobPayload | None  # None: not a mailroom payload (a foreign job, or a broken one)
    error: str  # the last line of the traceback
    traceback: str
    failed_at: datetime | None
    enqueued_at: datetime | None
    attempts: int

    @property
    def mailbox(self) -> str | None:
        return self.payload.mailbox if self.payload else None

    def summary(self) -> dict[str, Any]:
        p = self.payload
        return {
            "job_id": self.job_id,
            "queue": self.queue,
            "mailbox": p.mailbox if p else None,
            "key": p.key if p else None,
            "from": p.from_address if p else None,
            "subject": p.subject if p else None,
            "message_id": p.message_id if p else None,
            "error": self.error,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class Filters:
    queue: str | None = None
    mailbox: str | None = None
    since: datetime | None = None  # failed at or after
    error: str | None = None  # case-insensitive substring of the traceback
    key: str | None = None  # exact reply key

    def matches(self, item: FailedMessage) -> bool:
        if self.queue is not None and item.queue != self.queue:
            return False
        if self.mailbox is not None and item.mailbox != self.mailbox:
            return False
        if self.since is not None and (item.failed_at is None or item.failed_at < self.since):
            return False
        if self.error is not None and self.error.lower() not in item.traceback.lower():
            return False
        return self.key is None or (item.payload is not None and item.payload.key == self.key)


def queue_names(connection: redis.Redis, configured: Iterable[str]) -> list[str]:
    """The configured queues and every other queue RQ knows of (a renamed one may still hold failures)."""
    names = set(configured)
    names.update(q.name for q in Queue.all(connection=connection, serializer=JSONSerializer))
    return sorted(names)


def registry(connection: redis.Redis, queue: str) -> FailedJobRegistry:
    return FailedJobRegistry(queue, connection=connection, serializer=JSONSerializer)


def _describe(job: Job, queue: str) -> FailedMessage:
    payload = None
    try:
        payload = JobPayload.from_json(job.args[0]) if job.args else None
    except (PayloadError, IndexError, TypeError):
        payload = None
    results = job.results()
    latest = results[0] if results else None
    traceback = (latest.exc_string if latest is not None else None) or ""
    lines = [line.strip() for line in traceback.strip().splitlines() if line.strip()]
    failed_at = job.ended_at or (latest.created_at if latest is not None else None)
    if failed_at is not None and failed_at.tzinfo is None:
        failed_at = failed_at.replace(tzinfo=UTC)
    enqueued_at = job.enqueued_at
    if enqueued_at is not None and enqueued_at.tzinfo is None:
        enqueued_at = enqueued_at.replace(tzinfo=UTC)
    return FailedMessage(
        job_id=job.id,
        queue=queue,
        payload=payload,
        error=lines[-1][:300] if lines else "",
        traceback=traceback,
        failed_at=failed_at,
        enqueued_at=enqueued_at,
        attempts=max(1, len(results)),
    )


def iter_failed(
    connection: redis.Redis, queues: Iterable[str], filters: Filters | None = None
) -> Iterator[FailedMessage]:
    filters = filters or Filters()
    for name in queues:
        if filters.queue is not None and name != filters.queue:
            continue
        ids = registry(connection, name).get_job_ids()
        for job in Job.fetch_many(ids, connection=connection, serializer=JSONSerializer):
            if job is None:
                continue  # expired or deleted meanwhile
            item = _describe(job, name)
            if filters.matches(item):
                yield item


def list_failed(
    connection: redis.Redis, queues: Iterable[str], filters: Filters | None = None
) -> list[FailedMessage]:
    items = list(iter_failed(connection, queues, filters))
    items.sort(key=lambda i: i.failed_at or datetime.min.replace(tzinfo=UTC))
    return items


def get_failed(connection: redis.Redis, job_id: str) -> FailedMessage:
    """The failed job ``job_id`` (raises NotFailed if it does not exist or is not failed)."""
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        raise NotFailed(f"no job {job_id!r} (never existed, or expired after failure_ttl)") from None
    queue = job.origin
    if connection.zscore(registry(connection, queue).key, job_id) is None:
        raise NotFailed(f"job {job_id!r} is not failed (status: {job.get_status(refresh=False)})")
    return _describe(job, queue)


def raw_message(item: FailedMessage) -> bytes:
    """The message exactly as the IMAP server held it."""
    if item.payload is None:
        raise NotFailed(f"job {item.job_id!r} does not carry a mailroom message")
    return item.payload.raw


def _restore_retries(connection: redis.Redis, job_id: str) -> None:
    """A failed job has used up its retries; a requeued one gets them back (one per retry delay)."""
    intervals = connection.hget(Job.key_for(job_id), "retry_intervals")
    if intervals:
        connection.hset(Job.key_for(job_id), "retries_left", len(json.loads(intervals)))


def requeue(connection: redis.Redis, job_id: str) -> FailedMessage:
    """Move one failed job back to its own queue, data untouched. Raises NotFailed if it is not failed."""
    item = get_failed(connection, job_id)
    _restore_retries(connection, job_id)
    try:
        registry(connection, item.queue).requeue(job_id)
    except (InvalidJobOperation, NoSuchJobError):
        raise NotFailed(f"job {job_id!r} is no longer failed (requeued or deleted meanwhile)") from None
    history.set_status(connection, job_id, history.Status.REQUEUED)
    return item
