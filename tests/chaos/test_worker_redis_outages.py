"""The worker stays up while Redis is away: Redis (AOF) SIGKILLed and restarted twice while two worker
processes run 500 jobs; every message reaches the handler, nothing is left started, every line the
workers wrote is JSON. Prints how many handler calls there were beyond one per message."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from rq.registry import StartedJobRegistry

from devstack import RedisServer
from mailroom.config import load_settings
from tests.chaos.harness import MailroomProcess
from tests.integration.test_thread_worker import enqueue
from tests.support import queue, wait_for, write_config
from tests.worker_handlers import CALLS_KEY

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.slow]

N = 500


@pytest.fixture
def persistent_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    yield server
    server.kill()


@pytest.mark.timeout(240)
def test_redis_killed_twice_while_two_workers_run_500_jobs(persistent_redis, tmp_path):
    url = persistent_redis.url
    mailbox = {
        "name": "support", "host": "127.0.0.1", "security": "none", "username": "u", "password": "p",
        "handler": "tests.worker_handlers:behave", "retries": [1, 1, 1, 1, 1],
    }  # fmt: skip
    config = write_config(tmp_path / "c.yml", url, mailbox, log_format="json")
    ids = enqueue(load_settings(config), [f"sleep-0.1-{i}" for i in range(N)])
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [MailroomProcess(config, log, "worker").start() for log in logs]
    client = redis.Redis.from_url(url)
    wait_for(lambda: client.llen(CALLS_KEY) >= 50, timeout=60)
    for _ in range(2):
        persistent_redis.kill()  # SIGKILL: only what was fsynced survives
        time.sleep(2.0)
        persistent_redis.start()
        time.sleep(1.0)
    handled = lambda: {item.decode().split("|")[0] for item in client.lrange(CALLS_KEY, 0, -1)}  # noqa: E731
    wait_for(lambda: len(handled()) == N and len(queue(url)) == 0, timeout=150, interval=0.5)
    wait_for(lambda: not StartedJobRegistry(queue=queue(url)).get_job_ids(), timeout=30, interval=0.5)
    codes = [w.terminate(timeout=30)[0] for w in workers]
    calls = Counter(item.decode().split("|")[0] for item in client.lrange(CALLS_KEY, 0, -1))
    doubles = sum(c - 1 for c in calls.values())
    print(f"worker-redis-outages: {N} messages, {len(calls)} reached the handler, {doubles} extra calls")
    assert len(calls) == N and len(ids) == N
    assert codes == [0, 0]
    not_json = [
        line for log in logs for line in log.read_text().splitlines() if line.strip() and not _is_json(line)
    ]
    assert not not_json, "\n".join(not_json[:10])  # every line, RQ's and the outage's included
    text = "".join(log.read_text() for log in logs)
    assert "Redis unavailable" in text


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


@pytest.mark.timeout(240)
def test_threaded_worker_sigkilled_with_jobs_in_flight(redis_url, tmp_path):
    """The whole worker process (and its scheduler) SIGKILLed with ten jobs running: RQ's abandoned-job
    handling retries the started ones, the next worker puts back ids taken but never started, and
    every message reaches the handler; only the jobs in flight at the kill may run twice."""
    n = 300
    mailbox = {
        "name": "support", "host": "127.0.0.1", "security": "none", "username": "u", "password": "p",
        "handler": "tests.worker_handlers:behave", "retries": [0],
    }  # fmt: skip
    config = write_config(tmp_path / "c.yml", redis_url, mailbox, log_format="json")
    enqueue(load_settings(config), [f"sleep-0.1-{i}" for i in range(n)])
    log = tmp_path / "worker.log"
    client = redis.Redis.from_url(redis_url)
    first = MailroomProcess(config, log, "worker").start()
    wait_for(lambda: client.llen(CALLS_KEY) >= 60, timeout=60)
    first.kill()
    started = StartedJobRegistry(queue=queue(redis_url))
    in_flight = len(started.get_job_ids())
    assert in_flight > 0
    # A dead worker's jobs are found once their heartbeat has expired (job_monitoring_interval + 60 s)
    # by registry maintenance, which this worker runs every minute. Run that same RQ code with the clock
    # moved past it, rather than wait.
    started.cleanup(timestamp=time.time() + 120)
    second = MailroomProcess(config, log, "worker").start()

    def handled() -> set[str]:
        return {item.decode().split("|")[0] for item in client.lrange(CALLS_KEY, 0, -1)}

    wait_for(lambda: len(handled()) == n and len(queue(redis_url)) == 0, timeout=120, interval=0.5)
    code, _ = second.terminate(timeout=30)
    calls = Counter(item.decode().split("|")[0] for item in client.lrange(CALLS_KEY, 0, -1))
    doubles = sum(c - 1 for c in calls.values())
    print(f"sigkill-threaded-worker: {n} messages, {in_flight} in flight at the kill, {doubles} extra calls")
    assert len(calls) == n
    assert code == 0
    assert doubles <= in_flight
    assert not StartedJobRegistry(queue=queue(redis_url)).get_job_ids()


@pytest.mark.timeout(120)
def test_worker_started_while_redis_is_away_waits_and_recovers(tmp_path):
    """Before: a traceback and exit 1 (a CrashLoopBackOff in Kubernetes). Now: alive, not ready,
    retrying with back-off; when Redis appears the jobs are handled; SIGTERM exits 0."""
    from devstack.ports import free_port
    from tests.integration.test_ops_health import get

    server = RedisServer(tmp_path / "redis", port=free_port())
    url = server.url
    http_port = free_port()
    mailbox = {
        "name": "support", "host": "127.0.0.1", "security": "none", "username": "u", "password": "p",
        "handler": "tests.worker_handlers:behave", "retries": [],
    }  # fmt: skip
    config = write_config(tmp_path / "c.yml", url, mailbox, log_format="json", http_port=http_port)
    log = tmp_path / "worker.log"
    worker = MailroomProcess(config, log, "worker").start()
    try:
        wait_for(lambda: _status(get, http_port, "/readyz") == 503, timeout=30, interval=0.5)
        time.sleep(3)  # several failed attempts
        assert worker.alive
        assert _status(get, http_port, "/healthz") == 200
        assert _status(get, http_port, "/readyz") == 503
        server.start()
        enqueue(load_settings(config), [f"now-{i}" for i in range(20)])
        client = redis.Redis.from_url(url)
        wait_for(lambda: client.llen(CALLS_KEY) == 20, timeout=60, interval=0.5)
        assert _status(get, http_port, "/readyz") == 200
        code, _ = worker.terminate(timeout=30)
        assert code == 0
        text = log.read_text()
        assert "Redis unavailable" in text and "Traceback" not in text
        assert all(_is_json(line) for line in text.splitlines() if line.strip())
    finally:
        worker.kill()
        server.kill()


def _status(get, port: int, path: str) -> int | None:
    try:
        return int(get(port, path)[0])
    except OSError:
        return None
