"""The threaded worker writes what RQ's own SimpleWorker writes, key for key: the same job in each, the
Redis keyspace compared in shape (key names with ids replaced, types, whether a TTL is set, hash and
stream field names, sorted-set members) while the job runs and once it has finished. A worker that takes,
registers or acknowledges jobs with its own scripts must still look like RQ to RQ, `rq info` and
rq-dashboard."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from mailroom import history
from mailroom.rqworker import MailroomSimpleWorker
from tests.integration.test_thread_worker import _settings, enqueue, worker
from tests.support import queue
from workers import jobs

pytestmark = pytest.mark.integration

# Keys of the worker process itself (its name, state, counters, scheduler lock) and of the test handler.
_WORKER_KEYS = re.compile(r"^(rq:(worker:|workers|scheduler|clean_registries|maintenance)|test:)")
_EXECUTION = re.compile(r"\b[0-9a-f]{32}\b")


@pytest.fixture(autouse=True)
def _environment_settings_after():
    yield
    jobs.configure(None)


def shape(client: redis.Redis, job_id: str, worker_names: set[str]) -> dict[str, Any]:
    """The keyspace with the job id, execution ids and worker names replaced by placeholders."""

    def norm(text: str) -> str:
        text = text.replace(job_id, "JOB")
        for name in worker_names:
            text = text.replace(name, "WORKER")
        return _EXECUTION.sub("EXEC", text)

    found: dict[str, Any] = {}
    for raw in client.keys("*"):
        key = raw.decode()
        if _WORKER_KEYS.match(key):
            continue
        kind = client.type(raw).decode()
        ttl = client.ttl(raw)
        entry: dict[str, Any] = {"type": kind, "expires": ttl > 0}
        if kind == "hash":
            entry["fields"] = sorted(norm(f.decode()) for f in client.hkeys(raw))
            if key.startswith("rq:job:"):
                entry["status"] = client.hget(raw, "status")
        elif kind == "zset":
            entry["members"] = sorted(norm(m.decode()) for m in client.zrange(raw, 0, -1))
        elif kind == "set":
            entry["members"] = sorted(norm(m.decode()) for m in client.smembers(raw))
        elif kind == "stream":
            entry["entries"] = [sorted(f.decode() for f in fields) for _, fields in client.xrange(raw)]
        elif kind == "list":
            entry["items"] = [norm(i.decode()) for i in client.lrange(raw, 0, -1)]
        found[norm(key)] = entry
    return found


def run_and_sample(run: Callable[[], Any], redis_url: str, job_id: str) -> tuple[dict, dict, Any]:
    """(shape while the job runs, shape once finished, worker) for a job whose handler sleeps."""
    client = redis.Redis.from_url(redis_url)
    during: dict[str, Any] = {}
    names: set[str] = set()

    def sample() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if client.hget(Job.key_for(job_id), "status") == b"started" and client.zcard(
                "rq:wip:incoming_email"
            ):
                time.sleep(0.1)  # everything of the start is written by now (one transaction)
                registry = StartedJobRegistry(queue=queue(redis_url))
                ((jid, eid),) = registry.get_job_and_execution_ids()
                execution = Execution.fetch(eid, jid, client)
                names.add(execution.worker_name)
                during["execution"] = (execution.job_id, bool(execution.worker_name))
                during["executions"] = [e.id for e in Job.fetch(job_id, connection=client).get_executions()]
                during["started"] = (eid, Job.fetch(job_id, connection=client).get_status())
                during["shape"] = shape(client, job_id, names)
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    w = run()
    sampler.join()
    names.add(w.name)
    return during, shape(client, job_id, names), w


def test_a_job_run_by_the_thread_worker_looks_to_rq_like_one_run_by_simpleworker(tmp_path, redis_url):
    settings = _settings(tmp_path, redis_url)
    client = redis.Redis.from_url(redis_url)

    def simple() -> Any:
        q = queue(redis_url)
        w = MailroomSimpleWorker([q], connection=q.connection, serializer=JSONSerializer)
        w.work(burst=True)
        return w

    def threaded() -> Any:
        w = worker(settings)
        w.work(burst=True)
        return w

    shapes = []
    for run in (simple, threaded):
        client.flushall()
        (job_id,) = enqueue(settings, ["sleep-0.5-1"])
        during, after, _ = run_and_sample(run, redis_url, job_id)
        q = queue(redis_url)
        job = Job.fetch(job_id, connection=q.connection, serializer=JSONSerializer)
        assert job.get_status() == JobStatus.FINISHED
        result = job.latest_result()
        assert result is not None and result.return_value == {"handled": True, "result": "recorded"}
        assert result.execution_id and result.worker_name
        assert FinishedJobRegistry(queue=q).get_job_ids() == [job_id]
        assert StartedJobRegistry(queue=q).get_job_ids() == []
        assert job.args[0]["raw"] == ""  # the message bytes dropped from a handled job
        entry = history.get(client, job_id)
        assert entry is not None and entry.status == history.Status.HANDLED
        assert during["execution"] == (job_id, True)
        eid, status = during["started"]
        assert during["executions"] == [eid] and status == JobStatus.STARTED
        shapes.append((during["shape"], after))
    (simple_during, simple_after), (ours_during, ours_after) = shapes
    assert ours_during == simple_during
    assert ours_after == simple_after
