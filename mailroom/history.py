"""Per-message status history in Redis: "did my email arrive, and what happened to it?"

Each queued message gets a hash ``mailroom:history:<job id>`` (ids, key, sender, subject, status and a
short trail of status changes) and a member in the sorted set ``mailroom:history`` scored by the time it
was queued. Both are bounded: the hash expires after ``history_ttl`` seconds, and every write trims the
set (and deletes the trimmed hashes) to entries younger than ``history_ttl`` and at most
``history_max_entries`` of them, so the history never grows without bound.

The record is written atomically with the enqueue (``record_values``, in mailroom.queue's script); the
worker and ``mailroom requeue`` update its status with ``set_status``, which never recreates a record that
has expired.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script

from mailroom.schema import JobPayload

INDEX_KEY = "mailroom:history"
RECORD_PREFIX = "mailroom:history:"
_TRIM_BATCH = 1000  # entries removed per write at most: trimming stays cheap inside the enqueue
TRAIL_MAX = 512  # bytes of status trail kept per message


class Status(StrEnum):
    QUEUED = "queued"
    HANDLED = "handled"
    FAILED = "failed"  # the last attempt failed; RQ may still retry it (see the trail)
    REQUEUED = "requeued"
    PURGED = "purged"  # deleted from the failed registry by `mailroom failed purge`
    SKIPPED = "skipped_auto_reply"


# KEYS[1] index; ARGV: record prefix, oldest score kept, max entries.
_TRIM = """
local removed = 0
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(old) do
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[1], id)
  removed = removed + 1
end
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  local extra = redis.call('ZRANGE', KEYS[1], 0, math.min(excess, tonumber(ARGV[4])) - 1)
  for _, id in ipairs(extra) do
    redis.call('DEL', ARGV[1] .. id)
    redis.call('ZREM', KEYS[1], id)
    removed = removed + 1
  end
end
return removed
"""

# A Lua function (the worker's acknowledgement script calls it too): a status change in the record at
# ``key``, never recreating one that expired. 1 if the record exists.
SET_STATUS_FUNCTION = """
local function set_status(key, status, at, err, max_trail)
  if redis.call('EXISTS', key) == 0 then return 0 end
  local trail = redis.call('HGET', key, 'trail') or ''
  trail = trail .. ' ' .. status .. '@' .. at
  if string.len(trail) > tonumber(max_trail) then trail = string.sub(trail, -tonumber(max_trail)) end
  redis.call('HSET', key, 'status', status, 'updated_at', at, 'trail', trail)
  if err ~= '' then redis.call('HSET', key, 'error', err) end
  return 1
end
"""
# KEYS[1] record; ARGV: status, ISO time, error (may be empty), max trail bytes. Sent by SHA (EVALSHA),
# the text only when Redis does not know it yet; bytes, so no client is needed to hash it.
_SET_STATUS = Script(
    None,  # type: ignore[arg-type]
    (SET_STATUS_FUNCTION + "return set_status(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])").encode(),
)


@dataclass(frozen=True)
class Entry:
    job_id: str
    mailbox: str
    queued_at: datetime
    status: str
    message_id: str | None
    key: str | None
    from_address: str | None
    subject: str | None
    auto_reply: bool
    error: str | None
    updated_at: str | None
    trail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "mailbox": self.mailbox,
            "queued_at": self.queued_at.isoformat(),
            "status": self.status,
            "message_id": self.message_id,
            "key": self.key,
            "from": self.from_address,
            "subject": self.subject,
            "auto_reply": self.auto_reply,
            "error": self.error,
            "updated_at": self.updated_at,
            "trail": self.trail.split(),
        }


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def add_to_pipeline(
    pipe: Pipeline, payload: JobPayload, job_id: str, ttl: int, max_entries: int, now: float | None = None
) -> None:
    """Queue the commands that record one newly queued message (inside the caller's MULTI)."""
    if ttl <= 0:
        return
    now = time.time() if now is None else now
    key = RECORD_PREFIX + job_id
    pipe.hset(key, mapping=record_fields(payload, now))  # type: ignore[arg-type]
    pipe.expire(key, ttl)
    pipe.zadd(INDEX_KEY, {job_id: now})
    trim_in_pipeline(pipe, ttl, max_entries, now)


# The fields of a newly queued message's record, in the order record_values() gives their values.
RECORD_FIELDS = (
    "mailbox", "status", "queued_at", "updated_at", "trail",
    "message_id", "key", "from", "subject", "auto_reply",
)  # fmt: skip


def record_fields(payload: JobPayload, now: float) -> dict[str, str]:
    """The hash of a newly queued message."""
    return dict(zip(RECORD_FIELDS, record_values(payload, now), strict=True))


@lru_cache(maxsize=4)  # a batch's messages share their ``now``
def _queued(now: float) -> tuple[str, str, str]:
    iso = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
    return repr(now), iso, f"{Status.QUEUED.value}@{iso}"


def record_values(payload: JobPayload, now: float) -> list[str]:
    """The values of :data:`RECORD_FIELDS` (mailroom.queue's enqueue script sends the names once a batch)."""
    queued_at, iso, trail = _queued(now)
    return [
        payload.mailbox,
        Status.QUEUED.value,
        queued_at,
        iso,
        trail,
        payload.message_id or "",
        payload.key or "",
        payload.from_address or "",
        (payload.subject or "")[:300],
        "1" if (payload.auto_reply or payload.bounce) else "",
    ]


def trim_in_pipeline(pipe: Pipeline, ttl: int, max_entries: int, now: float) -> None:
    pipe.eval(_TRIM, 1, INDEX_KEY, RECORD_PREFIX, repr(now - ttl), max_entries, _TRIM_BATCH)


def set_status(connection: redis.Redis, job_id: str, status: Status, error: str | None = None) -> bool:
    """Record a status change; False when the message has no (or an expired) record."""
    one_line = " ".join((error or "").split())[:300]
    keys = [RECORD_PREFIX + job_id]
    done = _SET_STATUS(keys, [status.value, now_iso(), one_line, TRAIL_MAX], client=connection)
    return bool(done)


@dataclass(frozen=True)
class Query:
    since: datetime | None = None
    from_address: str | None = None  # case-insensitive substring
    key: str | None = None  # exact
    message_id: str | None = None  # exact, with or without <>
    mailbox: str | None = None
    status: str | None = None
    limit: int = 1000

    def matches(self, entry: Entry) -> bool:
        if self.from_address and self.from_address.lower() not in (entry.from_address or "").lower():
            return False
        if self.key is not None and entry.key != self.key:
            return False
        if self.message_id is not None and _bare(entry.message_id) != _bare(self.message_id):
            return False
        if self.mailbox is not None and entry.mailbox != self.mailbox:
            return False
        return self.status is None or entry.status == self.status


def _bare(message_id: str | None) -> str:
    return (message_id or "").strip().strip("<>")


def search(connection: redis.Redis, query: Query, scan: int = 500) -> list[Entry]:
    """Entries matching the query, newest first (reads the index in pages of ``scan``)."""
    low = query.since.timestamp() if query.since else "-inf"
    found: list[Entry] = []
    offset = 0
    while len(found) < query.limit:
        ids: Any = connection.zrevrangebyscore(
            INDEX_KEY, "+inf", low, start=offset, num=scan, withscores=True
        )
        if not ids:
            break
        offset += len(ids)
        with connection.pipeline(transaction=False) as pipe:
            for member, _ in ids:
                pipe.hgetall(RECORD_PREFIX + member.decode())
            records = pipe.execute()
        for (member, score), record in zip(ids, records, strict=True):
            if not record:
                continue  # expired between the two reads
            entry = _entry(member.decode(), score, record)
            if query.matches(entry):
                found.append(entry)
                if len(found) >= query.limit:
                    break
    return found


def get(connection: redis.Redis, job_id: str) -> Entry | None:
    record: Any = connection.hgetall(RECORD_PREFIX + job_id)
    if not record:
        return None
    return _entry(job_id, float(record.get(b"queued_at", b"0")), record)


def _entry(job_id: str, score: float, record: Mapping[bytes, bytes]) -> Entry:
    def text(name: str) -> str | None:
        value = record.get(name.encode())
        return value.decode("utf-8", "replace") if value else None

    return Entry(
        job_id=job_id,
        mailbox=text("mailbox") or "",
        queued_at=datetime.fromtimestamp(score, UTC),
        status=text("status") or "",
        message_id=text("message_id"),
        key=text("key"),
        from_address=text("from"),
        subject=text("subject"),
        auto_reply=bool(text("auto_reply")),
        error=text("error"),
        updated_at=text("updated_at"),
        trail=text("trail") or "",
    )
