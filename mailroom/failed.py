"""Failed mail: list, inspect, export, requeue and purge the jobs in RQ's failed registries.

The library behind ``mailroom failed ...`` and ``mailroom requeue``. A failed job keeps its JSON payload
(``job.args[0]``, the raw message base64-encoded) for ``failure_ttl`` seconds; requeueing moves it back
to its own queue with its data untouched (RQ's ``FailedJobRegistry.requeue``, which removes it from the
registry atomically, so two operators or two runs never requeue one job twice).

Listing streams, in constant memory however many failures wait: the registries are read a page at a
time (ZRANGE), and of each job only its small metadata fields (HMGET), its history record and its latest
result (the traceback) are read, never its data (the message). Only a job whose history record has
expired (``history_ttl`` is shorter than ``failure_ttl``) has its payload read for the key, sender and
subject, one job at a time.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from mailroom import history, poison
from mailroom.mailfiles import Writer, directory_writer, mbox_writer
from mailroom.queue import UNREADABLE_META
from mailroom.schema import JobPayload, PayloadError

PAGE_SIZE = 200  # registry entries read per round trip
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_JOB_FIELDS = ("origin", "description", "enqueued_at", "ended_at", "exc_info")
_HISTORY_FIELDS = ("mailbox", "key", "from", "subject", "message_id")
# The job's description, as mailroom.queue writes it: "email <mailbox> <source id> <<message id>>".
_DESCRIPTION = re.compile(r"^email (\S+) \S+ <(.*)>$")

# KEYS: registry, job hash, results stream, history record; ARGV: job id. 1 if purged, 0 if not failed.
_PURGE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""


def _results_key(job_id: str) -> str:
    return Result.get_key(job_id)  # type: ignore[no-untyped-call,no-any-return]


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
    """What a listing shows of one failed job: its metadata, never the message."""

    job_id: str
    queue: str
    mailbox: str | None
    key: str | None
    from_address: str | None
    subject: str | None
    message_id: str | None
    error: str  # the last line of the traceback
    traceback: str
    failed_at: datetime | None
    enqueued_at: datetime | None
    attempts: int

    def summary(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "queue": self.queue,
            "mailbox": self.mailbox,
            "key": self.key,
            "from": self.from_address,
            "subject": self.subject,
            "message_id": self.message_id,
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
        return self.key is None or item.key == self.key


@dataclass(frozen=True)
class Selection:
    """Which failed jobs a bulk action is for: the named ``job_ids``, or (none named) every one matching
    ``filters``; at most ``limit`` of them."""

    job_ids: tuple[str, ...] = ()
    filters: Filters = Filters()
    limit: int | None = None


@dataclass(frozen=True)
class Outcome:
    """One job of a bulk action: ``item`` is None when the job was not (or no longer) failed."""

    job_id: str
    item: FailedMessage | None
    done: bool
    reason: str | None = None
    where: str | None = None  # an export's file

    def as_dict(self) -> dict[str, Any]:
        found = {"job_id": self.job_id, "done": self.done, "reason": self.reason}
        return found if self.where is None else {**found, "where": self.where}


def queue_names(connection: redis.Redis, configured: Iterable[str]) -> list[str]:
    """The configured queues and every other queue RQ knows of (a renamed one may still hold failures)."""
    names = set(configured)
    names.update(q.name for q in Queue.all(connection=connection, serializer=JSONSerializer))
    return sorted(names)


def registry(connection: redis.Redis, queue: str) -> FailedJobRegistry:
    return FailedJobRegistry(queue, connection=connection, serializer=JSONSerializer)


def count(connection: redis.Redis, queues: Iterable[str]) -> int:
    """How many jobs the registries hold (an upper bound for a filtered listing)."""
    with connection.pipeline(transaction=False) as pipe:
        for name in queues:
            pipe.zcard(registry(connection, name).key)
        return sum(pipe.execute())


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value else None


def _time(value: bytes | None) -> datetime | None:
    try:
        return utcparse(value.decode()) if value else None
    except ValueError:
        return None


def _traceback(latest: Any, exc_info: bytes | None) -> tuple[str, datetime | None]:
    """The latest result's traceback and time (RQ's results stream), else the job's own exc_info."""
    if latest:
        result_id, fields = latest[0]
        created = datetime.fromtimestamp(int(result_id.split(b"-")[0]) / 1000, UTC)
        encoded = fields.get(b"exc_string")
        try:
            return (
                zlib.decompress(base64.b64decode(encoded)).decode("utf-8", "replace") if encoded else ""
            ), created
        except (zlib.error, binascii.Error):
            return "", created
    if exc_info:
        try:
            return zlib.decompress(exc_info).decode("utf-8", "replace"), None
        except zlib.error:
            return exc_info.decode("utf-8", "replace"), None
    return "", None


def _describe_page(connection: redis.Redis, ids: Sequence[str], queue: str | None) -> list[FailedMessage]:
    """The metadata of these jobs in one round trip (jobs deleted meanwhile are left out)."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(Job.key_for(job_id), _JOB_FIELDS)
            pipe.hmget(history.RECORD_PREFIX + job_id, _HISTORY_FIELDS)
            pipe.xrevrange(_results_key(job_id), "+", "-", count=1)
            pipe.xlen(_results_key(job_id))
        replies = pipe.execute()
    items = []
    for n, job_id in enumerate(ids):
        job, record, latest, results = replies[4 * n : 4 * n + 4]
        origin, description, enqueued_at, ended_at, exc_info = job
        if origin is None and description is None:
            continue  # expired or deleted meanwhile
        traceback, result_at = _traceback(latest, exc_info)
        lines = [line.strip() for line in traceback.strip().splitlines() if line.strip()]
        mailbox, key, sender, subject, message_id = (_text(v) for v in record)
        if mailbox is None:  # no history record (expired, or history off): the description, the payload
            described = _DESCRIPTION.match(_text(description) or "")
            if described:
                mailbox, message_id = described.group(1), described.group(2) or None
                payload = _payload(connection, job_id)
                if payload is not None:
                    key, sender, subject = payload.key, payload.from_address, payload.subject
        items.append(
            FailedMessage(
                job_id=job_id,
                queue=queue or _text(origin) or "",
                mailbox=mailbox,
                key=key,
                from_address=sender,
                subject=subject,
                message_id=message_id,
                error=lines[-1][:300] if lines else "",
                traceback=traceback,
                failed_at=_time(ended_at) or result_at,
                enqueued_at=_time(enqueued_at),
                attempts=max(1, results),
            )
        )
    return items


def _scan(
    connection: redis.Redis, queue: str, filters: Filters, page_size: int
) -> Iterator[tuple[float, float, str, FailedMessage]]:
    """One registry's matching jobs, oldest failure first (its score is when the job expires).

    Paged by rank; after each page the next offset counts only the entries still there, so a caller that
    requeues or purges what it is given misses nothing.
    """
    key = registry(connection, queue).key
    offset = 0
    while True:
        page: list[tuple[bytes, float]] = connection.zrange(  # type: ignore[assignment]
            key, offset, offset + page_size - 1, withscores=True
        )
        if not page:
            return
        ids = [member.decode() for member, _ in page]
        scores = dict(zip(ids, (score for _, score in page), strict=True))
        found = [
            (scores[item.job_id], item.failed_at.timestamp() if item.failed_at else 0.0, item.job_id, item)
            for item in _describe_page(connection, ids, queue)
            if filters.matches(item)
        ]
        yield from sorted(found, key=lambda entry: entry[:3])  # a score is whole seconds: ties are common
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.zscore(key, job_id)
            offset += sum(1 for score in pipe.execute() if score is not None)


def iter_failed(
    connection: redis.Redis,
    queues: Iterable[str],
    filters: Filters | None = None,
    limit: int | None = None,
    page_size: int | None = None,
) -> Iterator[FailedMessage]:
    """The failed jobs matching ``filters``, oldest failure first across the queues, streamed: memory
    stays flat however many there are."""
    filters = filters or Filters()
    scans = [
        _scan(connection, name, filters, page_size or PAGE_SIZE)
        for name in queues
        if filters.queue is None or name == filters.queue
    ]
    for n, (_, _, _, item) in enumerate(heapq.merge(*scans, key=lambda entry: entry[:3])):
        if limit is not None and n >= limit:
            return
        yield item


def get_failed(connection: redis.Redis, job_id: str) -> FailedMessage:
    """The failed job ``job_id`` (raises NotFailed if it does not exist or is not failed)."""
    fields: list[bytes | None] = connection.hmget(Job.key_for(job_id), ("origin", "status"))  # type: ignore[assignment]
    origin, status = fields
    if origin is None:
        raise NotFailed(f"no job {job_id!r} (never existed, or expired after failure_ttl)")
    queue = origin.decode()
    if connection.zscore(registry(connection, queue).key, job_id) is None:
        state = status.decode() if status else "unknown"
        raise NotFailed(f"job {job_id!r} is not failed (status: {state})")
    described = _describe_page(connection, [job_id], queue)
    if not described:
        raise NotFailed(f"no job {job_id!r} (deleted meanwhile)")
    return described[0]


def _payload(connection: redis.Redis, job_id: str) -> JobPayload | None:
    """The job's payload (its data: the whole message), or None when it carries no mailroom message."""
    data: bytes | None = connection.hget(Job.key_for(job_id), "data")  # type: ignore[assignment]
    if not data:
        return None
    try:
        data = zlib.decompress(data)  # RQ compresses what it saves itself; mailroom's enqueue does not
    except zlib.error:
        pass
    try:
        args = json.loads(data)[2]
        return JobPayload.from_json(args[0])
    except (ValueError, PayloadError, IndexError, KeyError, TypeError):
        return None


def payload(connection: redis.Redis, job_id: str) -> JobPayload | None:
    """A failed job's payload, read in full (one job: for ``failed show`` and ``failed export``)."""
    get_failed(connection, job_id)
    return _payload(connection, job_id)


@dataclass(frozen=True)
class Shown:
    """One failed job in full, for ``failed show``: its metadata, traceback and payload (never the body)."""

    item: FailedMessage
    payload: JobPayload | None

    def as_dict(self) -> dict[str, Any]:
        item = self.item
        return {
            **item.summary(),
            "enqueued_at": item.enqueued_at.isoformat() if item.enqueued_at else None,
            "payload": self.payload.summary() if self.payload is not None else None,
            "traceback": item.traceback,
        }


def show(connection: redis.Redis, job_id: str) -> Shown:
    """The failed job ``job_id`` with its payload (raises NotFailed if it is not failed)."""
    return Shown(get_failed(connection, job_id), _payload(connection, job_id))


def raw_message(connection: redis.Redis, job_id: str) -> bytes:
    """The failed message exactly as the IMAP server held it."""
    found = payload(connection, job_id)
    if found is None:
        raise NotFailed(f"job {job_id!r} does not carry a mailroom message")
    return found.raw


def _restore_retries(connection: redis.Redis, job_id: str) -> None:
    """A failed job has used up its retries; a requeued one gets them back (one per retry delay)."""
    intervals = connection.hget(Job.key_for(job_id), "retry_intervals")
    if intervals:
        connection.hset(Job.key_for(job_id), "retries_left", len(json.loads(intervals)))


def requeue(connection: redis.Redis, job_id: str) -> FailedMessage:
    """Move one failed job back to its own queue, data untouched. Raises NotFailed if it is not failed.

    A message the server would not hand over (mailroom.poison) has no body to run a handler on: its record
    is removed and its fetch failures forgotten instead, so the watcher fetches it again at its next
    catch-up (new mail, or idle_timeout at the latest).
    """
    item = get_failed(connection, job_id)
    job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    p = _payload(connection, job_id) if job.meta.get(UNREADABLE_META) else None
    if p is not None:
        if not registry(connection, item.queue).remove(job, delete_job=True):
            raise NotFailed(f"job {job_id!r} is no longer failed (requeued or deleted meanwhile)")
        poison.forget_failed(connection, p.mailbox, p.uidvalidity, p.uid if p.uid is not None else "")
        history.set_status(connection, job_id, history.Status.REQUEUED)
        return item
    _restore_retries(connection, job_id)
    try:
        registry(connection, item.queue).requeue(job_id)
    except (InvalidJobOperation, NoSuchJobError):
        raise NotFailed(f"job {job_id!r} is no longer failed (requeued or deleted meanwhile)") from None
    history.set_status(connection, job_id, history.Status.REQUEUED)
    return item


def purge(connection: redis.Redis, job_id: str) -> FailedMessage:
    """Delete one failed job (its data and results) for good. Raises NotFailed if it is not failed."""
    item = get_failed(connection, job_id)
    keys = (registry(connection, item.queue).key, Job.key_for(job_id), _results_key(job_id))
    if not connection.eval(_PURGE, len(keys), *keys, job_id):
        raise NotFailed(f"job {job_id!r} is no longer failed (requeued or deleted meanwhile)")
    history.set_status(connection, job_id, history.Status.PURGED)
    return item


def select(connection: redis.Redis, queues: Iterable[str], selection: Selection) -> Iterator[Outcome]:
    """The selected jobs as not-yet-done outcomes: each failed one with its metadata, each named one that
    is not failed with the reason. Streams."""
    if not selection.job_ids:
        for item in iter_failed(connection, queues, selection.filters, selection.limit):
            yield Outcome(item.job_id, item, done=False)
        return
    for job_id in selection.job_ids[: selection.limit]:
        try:
            yield Outcome(job_id, get_failed(connection, job_id), done=False)
        except NotFailed as exc:
            yield Outcome(job_id, None, done=False, reason=str(exc))


def _bulk(
    connection: redis.Redis, queues: Iterable[str], selection: Selection, dry_run: bool, action: Any
) -> Iterator[Outcome]:
    for outcome in select(connection, queues, selection):
        if outcome.item is None or dry_run:
            yield replace(outcome, done=outcome.item is not None)
            continue
        try:
            yield replace(outcome, item=action(connection, outcome.job_id), done=True)
        except NotFailed as exc:
            yield replace(outcome, item=None, reason=str(exc))


def requeue_selected(
    connection: redis.Redis, queues: Iterable[str], selection: Selection, dry_run: bool = False
) -> Iterator[Outcome]:
    """Requeue each selected job (``dry_run``: say which would be), one outcome each, streamed."""
    return _bulk(connection, queues, selection, dry_run, requeue)


def purge_selected(
    connection: redis.Redis, queues: Iterable[str], selection: Selection, dry_run: bool = False
) -> Iterator[Outcome]:
    """Delete each selected job for good (``dry_run``: say which would be), one outcome each, streamed."""
    return _bulk(connection, queues, selection, dry_run, purge)


def export_selected(
    connection: redis.Redis,
    queues: Iterable[str],
    selection: Selection,
    directory: Path | None = None,
    mbox: Path | None = None,
) -> Iterator[Outcome]:
    """Write each selected message's raw bytes to ``directory/<job id>.eml`` or append it to ``mbox``,
    one message in memory at a time; one outcome each."""
    close: Any = None
    if mbox is not None:
        write, close = mbox_writer(mbox)
    elif directory is not None:
        write = directory_writer(directory)
    else:
        raise ValueError("export to a directory or an mbox")
    try:
        for outcome in select(connection, queues, selection):
            if outcome.item is None:
                yield outcome
                continue
            yield _export_one(connection, outcome, write)
    finally:
        if close is not None:
            close()


def _export_one(connection: redis.Redis, outcome: Outcome, write: Writer) -> Outcome:
    try:
        raw = raw_message(connection, outcome.job_id)
    except NotFailed as exc:
        return replace(outcome, item=None, reason=str(exc))
    return replace(outcome, done=True, where=write(outcome.job_id, raw))
