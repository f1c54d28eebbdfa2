"""The only job writer: Redis key names, the idempotent guarded enqueue, RQ with JSON.

Idempotency: every message has a guard key derived from where it came from, (mailbox, UIDVALIDITY, UID)
for IMAP. A batch is enqueued by one Lua script (one round trip), which for each message claims the guard
with SET NX and, only if that succeeded, writes the RQ job hash, pushes its id on the queue and records
its history entry. A script runs atomically, so a guard never exists without its job, and a message whose
guard exists (a redelivery after a crash, or another replica won) is skipped: a job is never written
twice, however many replicas race.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now

from mailroom import history, redis_safety
from mailroom.config import MailboxConfig, Settings
from mailroom.errors import EnqueueError
from mailroom.schema import JobPayload

# The worker entry point, by dotted name: mailroom never imports workers.
JOB_FUNCTION = "workers.jobs.handle_email"

KEY_PREFIX = "mailroom:"
GUARD_PREFIX = KEY_PREFIX + "guard:"
# A counter each replicated enqueue bumps before WAIT (MailQueue.enqueue_batch says why)
REPLICATION_BARRIER_KEY = KEY_PREFIX + "replication-barrier"

# job.meta of a failed record for a message the server would not hand over (mailroom.poison): requeueing
# it fetches the message again instead of running a handler on its header.
UNREADABLE_META = "mailroom_unreadable"

_PER_JOB_FIELDS = frozenset({"data", "description"})
# RQ's JSON job data is [function, instance, args, kwargs]; the payload is the only argument.
_DATA_HEAD = ("[" + json.dumps(JOB_FUNCTION) + ", null, [").encode()
_DATA_TAIL = b"], {}]"
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def guard_key(payload: JobPayload) -> str:
    return f"{GUARD_PREFIX}{payload.mailbox}:{payload.source_id}"


def job_id_for(payload: JobPayload) -> str:
    """A deterministic, readable RQ job id: ``support-1712-42`` for IMAP UID 42 of UIDVALIDITY 1712.

    Ids without an epoch (a Graph immutable id: ~150 characters of base64 with ``=``) are hashed: RQ
    takes only letters, digits, ``_`` and ``-``, and replacing the rest could make two ids one.
    """
    if payload.uidvalidity is None:
        digest = hashlib.sha256(str(payload.uid).encode()).hexdigest()[:32]
        return _UNSAFE_ID_CHARS.sub("_", f"{payload.mailbox}-{payload.source}-{digest}")
    return _UNSAFE_ID_CHARS.sub("_", f"{payload.mailbox}-{payload.uidvalidity}-{payload.uid}")


@dataclass(frozen=True)
class Enqueued:
    payload: JobPayload
    job_id: str
    new: bool  # False: it was already queued before (a redelivery), nothing was written


class MailQueue:
    """Writes one RQ job per message, at most once per message."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self._queues: dict[str, Queue] = {}
        self._script = connection.register_script(_ENQUEUE_BATCH)
        self._replica_acks: int | None = None  # set by the checks before the first write

    def replica_acks(self) -> int:
        """Replicas each enqueue waits for (WAIT): the setting, else 1 if replicas were connected when
        this queue first wrote. Fixed from then on: a replica that goes away must not lower the bar.

        Before that first write, the Redis is checked as ``watch`` checks it at start (which it cannot
        when Redis is away then): an evicting Redis is refused, at every attempt, with EnqueueError.
        """
        if self._replica_acks is None:
            try:
                safety = redis_safety.inspect(self.connection)
            except RedisError as exc:
                raise EnqueueError(f"Redis did not answer INFO: {type(exc).__name__}: {exc}") from exc
            problem = redis_safety.eviction_problem(safety)
            if problem is not None:
                raise EnqueueError(f"refusing to queue mail: {problem}")
            self._replica_acks = redis_safety.replica_acks(self.settings, safety.connected_replicas)
        return self._replica_acks

    def rq_queue(self, name: str) -> Queue:
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.connection, serializer=JSONSerializer)
        return self._queues[name]

    def enqueue_batch(self, mailbox: MailboxConfig, payloads: Sequence[JobPayload]) -> list[Enqueued]:
        """Enqueue every payload not yet queued, atomically with its guard. Raises EnqueueError."""
        if not payloads:
            return []
        queue = self.rq_queue(mailbox.queue)
        job = self._job_template(mailbox, queue)
        now = time.time()
        history_ttl = self.settings.history_ttl
        names = history.RECORD_FIELDS if history_ttl > 0 else ()
        job_ids = [job_id_for(p) for p in payloads]
        args: list[Any] = [queue.key, queue.redis_queues_keys, self.settings.guard_ttl, history.INDEX_KEY]
        args += [history_ttl, repr(now), Job.key_for(""), history.RECORD_PREFIX, len(job.shared), len(names)]
        args += job.shared
        args += names
        for payload, job_id in zip(payloads, job_ids, strict=True):
            args += (guard_key(payload), job_id, job.data(payload), job.description(payload))
            if names:
                args += history.record_values(payload, now)
        acks = self.replica_acks()
        timeout = self.settings.redis_replica_ack_timeout
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                self._script(args=args, client=pipe)
                if history_ttl > 0:
                    history.trim_in_pipeline(pipe, history_ttl, self.settings.history_max_entries, now)
                if acks:
                    # WAIT counts replicas that have this connection's last write. A retry whose script
                    # writes nothing (every guard exists) may come on another pooled connection that
                    # never wrote, and WAIT would answer at once: one write first puts this connection
                    # at the current offset, past the first attempt's jobs.
                    pipe.incr(REPLICATION_BARRIER_KEY)
                    # In the same round trip: WAIT answers once `acks` replicas have every write of this
                    # connection so far (the script's included), or at the timeout with the count so far.
                    pipe.wait(acks, max(1, int(timeout * 1000)))
                replies = pipe.execute()
        except RedisError as exc:
            raise EnqueueError(f"Redis did not take the batch: {type(exc).__name__}: {exc}") from exc
        created = replies[0]
        if acks and int(replies[-1]) < acks:
            # The jobs are on the primary but could die with it in a failover: not acknowledged, so the
            # batch stays unmarked. Its retry finds the guards, writes nothing, and WAITs again.
            raise EnqueueError(
                f"only {int(replies[-1])} of {acks} Redis replica(s) acknowledged the batch within"
                f" {timeout:g} s (redis_min_replica_acks)"
            )
        return [
            Enqueued(payload, job_id, new=bool(new))
            for payload, job_id, new in zip(payloads, job_ids, created, strict=True)
        ]

    def record_unreadable(self, mailbox: MailboxConfig, payload: JobPayload, words: str) -> str:
        """A message the server would not hand over (mailroom.poison), as a failed job with its own job
        id: ``payload`` holds what could be read (size, the header if the server gave it), the traceback
        the server's ``words``, and the history records it as failed. Returns the job id."""
        queue = self.rq_queue(mailbox.queue)
        job_id = job_id_for(payload)
        error = f"mailroom.errors.FetchFailed: the server would not hand the message over: {words}"
        job = queue.create_job(
            JOB_FUNCTION,
            args=(payload.to_json(),),
            job_id=job_id,
            timeout=self.settings.job_timeout,
            result_ttl=self.settings.result_ttl,
            failure_ttl=self.settings.failure_ttl,
            description=JobTemplate.description(payload),
            meta={UNREADABLE_META: True},
            status=JobStatus.FAILED,
        )
        job.origin = queue.name
        job.enqueued_at = job.ended_at = now()
        ttl = self.settings.failure_ttl
        stamp = time.time()
        try:
            with self.connection.pipeline() as pipe:
                job.save(pipeline=pipe)
                queue.failed_job_registry.add(job, ttl=ttl, exc_string=error, pipeline=pipe)
                Result.create_failure(job, ttl, exc_string=error, pipeline=pipe)
                if self.settings.history_ttl > 0:
                    record = history.record_fields(payload, stamp)
                    iso = record["updated_at"]
                    record.update(status=history.Status.FAILED.value, error=error[:300])
                    record["trail"] += f" {history.Status.FAILED.value}@{iso}"
                    pipe.hset(history.RECORD_PREFIX + job_id, mapping=record)  # type: ignore[arg-type]
                    pipe.expire(history.RECORD_PREFIX + job_id, self.settings.history_ttl)
                    pipe.zadd(history.INDEX_KEY, {job_id: stamp})
                pipe.execute()
        except RedisError as exc:
            raise EnqueueError(f"Redis did not take the failed record: {type(exc).__name__}: {exc}") from exc
        return job_id

    def _job_template(self, mailbox: MailboxConfig, queue: Queue) -> JobTemplate:
        """The RQ job hash for this mailbox's messages, as ``Queue.enqueue_call`` would store it.

        RQ builds, zlib-compresses and saves a Job object per call, in nine commands: most of the watcher's
        time went there. Here RQ builds one prototype job per batch (so every option keeps RQ's own
        encoding): the script gets its fields once, and each message adds only its data and description,
        uncompressed (RQ reads both forms). tests/integration/test_queue_format.py holds this to what RQ
        itself writes.
        """
        retry = Retry(max=len(mailbox.retries), interval=list(mailbox.retries)) if mailbox.retries else None
        prototype = queue.create_job(
            JOB_FUNCTION,
            args=(None,),
            timeout=self.settings.job_timeout,
            result_ttl=self.settings.result_ttl,
            failure_ttl=self.settings.failure_ttl,
            retry=retry,
            status=JobStatus.QUEUED,
        )
        prototype.origin = queue.name
        prototype.enqueued_at = now()
        shared = [
            item
            for name, value in prototype.to_dict().items()
            if value is not None and name not in _PER_JOB_FIELDS
            for item in (name, value)
        ]
        return JobTemplate(shared)


@dataclass(frozen=True)
class JobTemplate:
    """One batch's RQ job hash: the fields every job shares (names and values, flat), and the two that
    differ per message."""

    shared: list[bytes | str | int | float]

    @staticmethod
    def data(payload: JobPayload) -> bytes:
        head, raw, tail = payload.json_parts()
        return b"".join((_DATA_HEAD, head, raw, tail, _DATA_TAIL))

    @staticmethod
    def description(payload: JobPayload) -> str:
        return f"email {payload.mailbox} {payload.source_id} <{payload.message_id or ''}>"


# ARGV: queue key, queue set key, guard ttl, history index, history ttl, now, job key prefix, history key
# prefix, then the count of shared job field items (names and values, flat) and of history field names,
# those items, those names; then per message: guard key, job id, data, description, and one value per
# history field name. Returns 1 per message enqueued now, 0 per message whose guard already existed.
_ENQUEUE_BATCH = """
local queue_key, queues_key, guard_ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local index_key, history_ttl, now = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local job_prefix, history_prefix = ARGV[7], ARGV[8]
local nj, nh = tonumber(ARGV[9]), tonumber(ARGV[10])
local job, record = {}, {}
for k = 1, nj do job[k] = ARGV[10 + k] end
job[nj + 1], job[nj + 3] = 'data', 'description'
for k = 1, nh do record[2 * k - 1] = ARGV[10 + nj + k] end
local created = {}
local i = 11 + nj + nh
while i <= #ARGV do
  local guard, job_id = ARGV[i], ARGV[i + 1]
  if redis.call('SET', guard, job_id, 'NX', 'EX', guard_ttl) then
    job[nj + 2], job[nj + 4] = ARGV[i + 2], ARGV[i + 3]
    redis.call('HSET', job_prefix .. job_id, unpack(job))
    redis.call('RPUSH', queue_key, job_id)
    if nh > 0 then
      for k = 1, nh do record[2 * k] = ARGV[i + 3 + k] end
      local history_key = history_prefix .. job_id
      redis.call('HSET', history_key, unpack(record))
      redis.call('EXPIRE', history_key, history_ttl)
      redis.call('ZADD', index_key, now, job_id)
    end
    created[#created + 1] = 1
  else
    created[#created + 1] = 0
  end
  i = i + 4 + nh
end
redis.call('SADD', queues_key, queue_key)
return created
"""
