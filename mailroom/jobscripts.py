"""The thread worker's two Lua scripts: take jobs and register them as started; acknowledge successes.

RQ writes a job's start and its success with redis-py commands built one by one in Python: about 28
commands a job, and the Python that builds and parses them cost more than the job (a ``log`` handler).
These scripts write the same keys with the same fields and scores, one call a batch, and are sent
once (EVALSHA after the first call). What RQ 3.0 writes, and so what they write:

- a started job (``Execution.create``, ``Job.prepare_for_execution``, ``PERSIST``, worker heartbeat):
  the job hash's ``status`` ``started``, ``started_at``, ``last_heartbeat``, ``worker_name``; the
  Execution hash ``rq:execution:<job>:<execution>`` and its entry in ``rq:executions:<job>``; the
  StartedJobRegistry entry ``<job>:<execution>`` scored by its heartbeat's expiry; the worker's
  executions set; the worker's ``last_heartbeat``, its TTLs and ``state`` busy;
- a finished job (``handle_job_success``, ``Job._handle_success``, ``Result.create``,
  ``cleanup_execution``): the job hash's ``status`` ``finished``, ``started_at``, ``ended_at``,
  ``last_heartbeat`` (and ``data`` when the job replaced its arguments); a Result entry in the stream
  ``rq:results:<job>`` (MAXLEN ~ 10, expiring with the result); FinishedJobRegistry scored by the
  result's expiry; the job key's EXPIRE; the execution removed everywhere; the worker's counters; and
  the message's status in ``mailroom history``.

tests/integration/test_thread_worker_parity.py compares the keyspace with what RQ's SimpleWorker
leaves for the same job, while it runs and once it has finished: an RQ upgrade that changes what it
writes fails there. Anything RQ does that these do not (dependents, callbacks, repeats, rate limits,
webhooks, ``result_ttl`` 0, failures and retries) stays on RQ's own code path.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, cast

import redis
from redis.commands.core import Script
from rq.defaults import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
from rq.job import Job
from rq.utils import utcformat

from mailroom import history

EXECUTION_PREFIX = "rq:execution:"  # + <job id>:<execution id>: rq.executions.Execution.key
EXECUTIONS_PREFIX = "rq:executions:"  # + <job id>: rq.executions.ExecutionRegistry
RESULTS_PREFIX = "rq:results:"  # + <job id>: rq.results.Result.get_key
RESULTS_MAXLEN = 10  # Result.save: XADD ... MAXLEN ~ 10

# KEYS: 1 the queue (pop mode) or its intermediate list (ids mode), 2 StartedJobRegistry, 3 worker,
#       4 worker's executions set.
# ARGV: 1 'pop' or 'ids', 2 how many, 3 worker name, 4 now (RQ's utcformat), 5 now (epoch float),
#       6 now (epoch seconds), 7 job_monitoring_interval, 8 worker heartbeat TTL, 9.. one execution
#       id per job, then (ids mode) the job ids.
# Returns job id, execution id, the job's hash as read before the start (HGETALL), job id, ...
_START = """
local pop = ARGV[1] == 'pop'
local want = tonumber(ARGV[2])
local worker, now_iso, now_f, now_i = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local interval = tonumber(ARGV[7])
local taken = {}
local started = 0
for i = 1, want do
  local id
  if pop then
    id = redis.call('LPOP', KEYS[1])
    if not id then break end
  else
    id = ARGV[8 + want + i]
    redis.call('LREM', KEYS[1], 1, id)
  end
  local key = 'rq:job:' .. id
  local flat = redis.call('HGETALL', key)
  if #flat > 0 then  -- a job deleted meanwhile is skipped, as RQ's dequeue does
    local timeout = nil
    for f = 1, #flat, 2 do
      if flat[f] == 'timeout' then timeout = tonumber(flat[f + 1]) end
    end
    -- BaseWorker.get_heartbeat_ttl
    local ttl = interval + 60
    if timeout and timeout > 0 then ttl = math.floor(math.min(timeout, interval)) + 60 end
    local eid = ARGV[8 + i]
    local composite = id .. ':' .. eid
    local ekey = 'rq:execution:' .. composite
    redis.call('HSET', ekey, 'id', eid, 'job_id', id, 'created_at', now_f, 'last_heartbeat', now_f,
      'worker_name', worker)
    redis.call('EXPIRE', ekey, ttl)
    redis.call('ZADD', 'rq:executions:' .. id, now_i + ttl + 60, eid)
    redis.call('EXPIRE', 'rq:executions:' .. id, ttl + 60)
    redis.call('ZADD', KEYS[2], now_i + ttl, composite)
    redis.call('SADD', KEYS[4], composite)
    redis.call('EXPIRE', KEYS[4], ttl + 60)
    redis.call('HSET', key, 'last_heartbeat', now_iso, 'status', 'started', 'started_at', now_iso,
      'worker_name', worker)
    redis.call('PERSIST', key)
    taken[#taken + 1] = id
    taken[#taken + 1] = eid
    taken[#taken + 1] = flat
    started = started + 1
  end
end
if started > 0 then
  redis.call('HSET', KEYS[3], 'last_heartbeat', now_iso)
  redis.call('EXPIRE', KEYS[3], ARGV[8])
  redis.call('EXPIRE', KEYS[4], ARGV[8])
  redis.call('HSET', KEYS[3], 'state', 'busy')
end
return taken
"""

ACK_STRIDE = 12
# KEYS: 1 worker, 2 worker's executions set, then per queue its StartedJobRegistry and FinishedJobRegistry.
# ARGV: 1 worker name, 2 now (epoch seconds), 3 history time, 4 history trail bytes, 5 '1' to set the
#       worker idle, then per job (ACK_STRIDE): id, execution id, queue index (0-based), started_at,
#       ended_at (RQ's utcformat), execution started and ended (epoch float), result_ttl (> 0, or -1:
#       kept), serialized return value in Base64 ('' for None), history status, data ('' unchanged),
#       seconds worked.
# A job that has dependents is left alone and its id returned: RQ's handle_job_success enqueues them.
_ACK = (
    history.SET_STATUS_FUNCTION
    + """
local worker, now_i, hist_at, hist_max = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local deferred = {}
local done, worked = 0, 0
for i = 6, #ARGV, __STRIDE__ do
  local id, eid, q = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local started_at, ended_at = ARGV[i + 3], ARGV[i + 4]
  local ttl, value, status, data = tonumber(ARGV[i + 7]), ARGV[i + 8], ARGV[i + 9], ARGV[i + 10]
  local key = 'rq:job:' .. id
  if redis.call('EXISTS', key .. ':dependents') == 1 then
    deferred[#deferred + 1] = id
  else
    if data ~= '' then
      redis.call('HSET', key, 'status', 'finished', 'started_at', started_at, 'ended_at', ended_at,
        'last_heartbeat', ended_at, 'data', data)
    else
      redis.call('HSET', key, 'status', 'finished', 'started_at', started_at, 'ended_at', ended_at,
        'last_heartbeat', ended_at)
    end
    local results = 'rq:results:' .. id
    if value ~= '' then
      redis.call('XADD', results, 'MAXLEN', '~', '__MAXLEN__', '*', 'type', '1', 'worker_name', worker,
        'return_value', value, 'execution_id', eid, 'execution_started_at', ARGV[i + 5],
        'execution_ended_at', ARGV[i + 6])
    else
      redis.call('XADD', results, 'MAXLEN', '~', '__MAXLEN__', '*', 'type', '1', 'worker_name', worker,
        'execution_id', eid, 'execution_started_at', ARGV[i + 5], 'execution_ended_at', ARGV[i + 6])
    end
    local finished = KEYS[4 + 2 * q]
    if ttl == -1 then
      redis.call('PERSIST', results)
      redis.call('ZADD', finished, '+inf', id)
    else
      redis.call('EXPIRE', results, ttl)
      redis.call('ZADD', finished, now_i + ttl, id)
      redis.call('EXPIRE', key, ttl)
    end
    local composite = id .. ':' .. eid
    redis.call('DEL', 'rq:execution:' .. composite)
    redis.call('ZREM', KEYS[3 + 2 * q], composite)
    redis.call('ZREM', 'rq:executions:' .. id, eid)
    redis.call('SREM', KEYS[2], composite)
    set_status('mailroom:history:' .. id, status, hist_at, '', hist_max)
    done = done + 1
    worked = worked + tonumber(ARGV[i + 11])
  end
end
if done > 0 then
  redis.call('HINCRBY', KEYS[1], 'successful_job_count', done)
  redis.call('HINCRBYFLOAT', KEYS[1], 'total_working_time', string.format('%.6f', worked))
  if ARGV[5] == '1' and #deferred == 0 then redis.call('HSET', KEYS[1], 'state', 'idle') end
end
return deferred
""".replace("__STRIDE__", str(ACK_STRIDE)).replace("__MAXLEN__", str(RESULTS_MAXLEN))
)


class Scripts:
    """Both scripts, registered on the worker's connection (redis-py sends EVALSHA, and the script
    itself only when Redis does not have it yet, e.g. after a restart)."""

    def __init__(self, connection: redis.Redis) -> None:
        self._start: Script = connection.register_script(_START)
        self._ack: Script = connection.register_script(_ACK)

    def start(
        self,
        source: str,
        started_registry: str,
        worker: WorkerKeys,
        moment: datetime,
        execution_ids: Sequence[str],
        job_ids: Sequence[str] | None = None,
    ) -> list[tuple[str, str, dict[bytes, bytes]]]:
        """Take ``len(execution_ids)`` jobs from the list ``source`` (LPOP), or the given ``job_ids``
        from it (the queue's intermediate list: LREM), and register them as started; (job id,
        execution id, job hash as it was) for each job that exists."""
        keys = [source, started_registry, worker.key, worker.executions_key]
        args: list[str | int | float] = [
            "pop" if job_ids is None else "ids",
            len(execution_ids),
            worker.name,
            utcformat(moment),
            repr(moment.timestamp()),
            int(moment.timestamp()),
            worker.monitoring_interval,
            worker.heartbeat_ttl,
            *execution_ids,
            *(job_ids or ()),
        ]
        reply = self._start(keys=keys, args=args)
        return [
            (
                _text(reply[i]),
                _text(reply[i + 1]),
                dict(zip(reply[i + 2][::2], reply[i + 2][1::2], strict=True)),
            )
            for i in range(0, len(reply), 3)
        ]

    def acknowledge(
        self,
        worker: WorkerKeys,
        registries: Sequence[tuple[str, str]],
        successes: Sequence[Success],
        now: int,
        idle: bool,
    ) -> set[str]:
        """Write the successes; the ids of those left to RQ because they have dependents."""
        keys = [worker.key, worker.executions_key]
        for started, finished in registries:
            keys += [started, finished]
        args: list[str | int | bytes] = [
            worker.name,
            now,
            history.now_iso(),
            history.TRAIL_MAX,
            "1" if idle else "",
        ]
        for success in successes:
            args.extend(cast(tuple[str | int | bytes, ...], success))
        return {_text(job_id) for job_id in self._ack(keys=keys, args=args)}


@dataclass(frozen=True)
class WorkerKeys:
    """What the scripts need of the worker."""

    name: str
    key: str
    monitoring_interval: int  # job_monitoring_interval: the heartbeat TTL of a job is derived from it
    heartbeat_ttl: int  # of the worker key (RQ's heartbeat(): worker_ttl + 60)

    @property
    def executions_key(self) -> str:
        return WORKER_EXECUTIONS_KEY_TEMPLATE.format(self.name)


class Success(NamedTuple):
    """One finished job, as the acknowledgement script takes it (the order is the script's)."""

    job_id: str
    execution_id: str
    queue: int  # index into the registries passed along
    started_at: str  # RQ's utcformat
    ended_at: str
    execution_started: str  # epoch seconds, repr(float)
    execution_ended: str
    result_ttl: int  # > 0, or -1 (kept)
    value: str  # the serialized return value in Base64 ('' for None), as Result.serialize
    status: str  # mailroom history
    data: bytes | str  # the job's new data ('' unchanged)
    worked: str  # seconds


def serialized_result(job: Job, value: object) -> str:
    """Result.serialize's return_value field ('' for None: the field is left out)."""
    if value is None:
        return ""
    try:
        serialized = job.serializer.dumps(value)
    except Exception:  # noqa: BLE001 - as Result.serialize
        serialized = job.serializer.dumps(UNSERIALIZABLE_RETURN_VALUE_PAYLOAD)
    return b64encode(serialized).decode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
