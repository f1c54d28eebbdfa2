"""The threaded worker (mailroom.threadworker) against a real Redis: RQ's registries and semantics kept,
jobs run concurrently, a hung handler does not hold up the others, async handlers run on one loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from devstack import make_message
from mailroom import history
from mailroom.config import Settings, load_settings
from mailroom.queue import MailQueue
from mailroom.redis_client import connect
from mailroom.schema import JobPayload
from mailroom.threadworker import ThreadWorker
from tests.support import handled, queue, write_config
from tests.worker_handlers import CALLS_KEY
from workers import jobs

pytestmark = pytest.mark.integration


def _settings(
    tmp_path: Path, redis_url: str, handler: str = "tests.worker_handlers:behave", **top: Any
) -> Settings:
    mailbox = {
        "name": "support", "host": "127.0.0.1", "security": "none", "username": "u", "password": "p",
        "handler": handler, "retries": top.pop("retries", []),
    }  # fmt: skip
    settings = load_settings(write_config(tmp_path / "c.yml", redis_url, mailbox, **top))
    jobs.configure(settings)
    return settings


def enqueue(settings: Settings, keys: list[str]) -> list[str]:
    mailbox = settings.mailboxes[0]
    payloads = []
    for uid, key in enumerate(keys, 1):
        raw = make_message(uid)
        payloads.append(
            JobPayload(
                mailbox=mailbox.name,
                source="imap",
                uidvalidity=1,
                uid=uid,
                received_at="2026-11-25T00:00:00+00:00",
                size=len(raw),
                truncated=False,
                message_id=f"m{uid}@test",
                key=key,
                key_header="To",
                from_address="a@example.com",
                subject="s",
                auto_reply=False,
                bounce=False,
                parse_error=None,
                raw=raw,
            )
        )
    results = MailQueue(connect(settings.redis_url), settings).enqueue_batch(mailbox, payloads)
    return [r.job_id for r in results]


def worker(settings: Settings, concurrency: int = 10) -> ThreadWorker:
    connection = redis.Redis.from_url(settings.redis_url)
    return ThreadWorker(
        [queue(settings.redis_url)], connection=connection, serializer=JSONSerializer, concurrency=concurrency
    )


@pytest.fixture(autouse=True)
def _environment_settings_after():
    yield
    jobs.configure(None)


def test_jobs_run_concurrently_and_end_as_rq_would_record_them(tmp_path, redis_url):
    settings = _settings(tmp_path, redis_url)
    ids = enqueue(settings, [f"sleep-0.5-{i}" for i in range(10)] + [f"now-{i}" for i in range(40)])
    started = time.monotonic()
    worker(settings, concurrency=10).work(burst=True)
    took = time.monotonic() - started
    assert took < 4.0, took  # one at a time: over 5 s of sleeping alone
    q = queue(redis_url)
    assert sorted(FinishedJobRegistry(queue=q).get_job_ids()) == sorted(ids)
    assert StartedJobRegistry(queue=q).get_job_ids() == []
    assert len(q) == 0
    for job in Job.fetch_many(ids, q.connection, serializer=JSONSerializer):
        assert job is not None and job.get_status() == JobStatus.FINISHED
        result = job.latest_result()
        assert result is not None and result.return_value == {"handled": True, "result": "recorded"}
    assert len(handled(redis_url)) == 50
    client = redis.Redis.from_url(redis_url)
    threads = {item.decode().split("|")[2] for item in client.lrange(CALLS_KEY, 0, -1)}
    assert len(threads) > 1
    record = history.get(client, ids[0])
    assert record is not None and record.status == history.Status.HANDLED  # updated with the batch


def test_a_failing_handler_is_retried_then_failed_with_its_raw_message(tmp_path, redis_url):
    settings = _settings(tmp_path, redis_url, retries=[0])
    (failing,) = enqueue(settings, ["fail-1"])
    worker(settings).work(burst=True)  # the first try, and its retry (delay 0: queued again at once)
    q = queue(redis_url)
    failed = FailedJobRegistry(queue=q)
    assert failed.get_job_ids() == [failing]
    job = q.fetch_job(failing)
    assert job.get_status() == JobStatus.FAILED
    assert "handler failed on fail-1" in (job.latest_result().exc_string or "")
    assert StartedJobRegistry(queue=q).get_job_ids() == []
    client = redis.Redis.from_url(redis_url)
    assert client.llen(CALLS_KEY) == 2


def test_a_hung_handler_times_out_without_holding_up_the_others(tmp_path, redis_url):
    settings = _settings(tmp_path, redis_url, job_timeout=2)
    ids = enqueue(settings, ["hang-1"] + [f"sleep-0.2-{i}" for i in range(20)])
    started = time.monotonic()
    worker(settings, concurrency=2).work(burst=True)
    took = time.monotonic() - started
    q = queue(redis_url)
    assert FailedJobRegistry(queue=q).get_job_ids() == [ids[0]]
    assert "timeout" in (q.fetch_job(ids[0]).latest_result().exc_string or "").lower()
    assert sorted(FinishedJobRegistry(queue=q).get_job_ids()) == sorted(ids[1:])
    assert StartedJobRegistry(queue=q).get_job_ids() == []
    assert took < 10, took  # 20 x 0.2 s on the one other thread, plus the 2 s timeout


def test_async_handlers_run_concurrently_on_one_loop(tmp_path, redis_url):
    settings = _settings(tmp_path, redis_url, handler="tests.worker_handlers:async_record")
    ids = enqueue(settings, [f"sleep-0.5-{i}" for i in range(10)])
    started = time.monotonic()
    worker(settings, concurrency=10).work(burst=True)
    assert time.monotonic() - started < 4.0
    assert sorted(FinishedJobRegistry(queue=queue(redis_url)).get_job_ids()) == sorted(ids)
    assert len(handled(redis_url)) == 10


def test_stop_waits_for_running_jobs_and_puts_back_what_outlives_the_timeout(tmp_path, redis_url):
    settings = _settings(tmp_path, redis_url)
    ids = enqueue(settings, ["sleep-0.5-1", "hang-2"] + [f"later-{i}" for i in range(5)])
    w = worker(settings, concurrency=2)
    w.shutdown_timeout = 2.0
    client = redis.Redis.from_url(redis_url)

    def stop_when_both_run() -> None:
        deadline = time.monotonic() + 20
        while client.llen(CALLS_KEY) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        w.request_stop(15, None)  # what SIGTERM calls

    threading.Thread(target=stop_when_both_run, daemon=True).start()
    started = time.monotonic()
    w.work()  # in the main thread: it installs the signal handlers
    assert time.monotonic() - started < 15
    q = queue(redis_url)
    assert FinishedJobRegistry(queue=q).get_job_ids() == [ids[0]]  # finished within the grace
    assert StartedJobRegistry(queue=q).get_job_ids() == []  # none left "started"
    assert q.get_job_ids()[0] == ids[1]  # the hung one is back at the front
    assert q.fetch_job(ids[1]).get_status() == JobStatus.QUEUED
    assert len(q) == 6


class _SlowAcks(ThreadWorker):
    """Acknowledgements that take half a second a batch (a slow Redis, seen from the worker)."""

    def _acknowledge(self, batch: list[Any]) -> None:
        time.sleep(0.5)
        super()._acknowledge(batch)


def test_a_slot_frees_when_its_job_returns_and_finished_jobs_are_acknowledged_on_stop(tmp_path, redis_url):
    """A thread takes its next job while the success of its last one waits for the batch
    acknowledgement: StartedJobRegistry then briefly holds finished jobs besides the running ones,
    never more than twice ``concurrency`` (it held at most ``concurrency`` when a slot waited for the
    acknowledgement). A warm stop still acknowledges every finished
    job: none is left started or put back."""
    settings = _settings(tmp_path, redis_url)
    ids = enqueue(settings, [f"sleep-0.05-{i}" for i in range(12)])
    q = queue(redis_url)
    registry = StartedJobRegistry(queue=q)
    client = redis.Redis.from_url(redis_url)
    connection = redis.Redis.from_url(settings.redis_url)
    w = _SlowAcks([q], connection=connection, serializer=JSONSerializer, concurrency=2)
    counts: list[int] = []
    done = threading.Event()

    def sample_then_stop() -> None:
        deadline = time.monotonic() + 20
        while client.llen(CALLS_KEY) < 12 and time.monotonic() < deadline:
            counts.append(registry.count)
            time.sleep(0.01)
        w.request_stop(15, None)  # what SIGTERM calls: the last jobs finish, their acks still pending
        while not done.is_set():
            counts.append(registry.count)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample_then_stop, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        w.work()  # in the main thread: it installs the signal handlers
    finally:
        done.set()
        sampler.join()
    assert time.monotonic() - started < 15
    assert 2 < max(counts) <= 4, counts
    assert sorted(FinishedJobRegistry(queue=q).get_job_ids()) == sorted(ids)
    assert registry.get_job_ids() == []
    assert len(q) == 0 and len(handled(redis_url)) == 12


def test_jobs_whose_start_reply_was_lost_go_back_to_their_queue_when_redis_answers(tmp_path, redis_url):
    """Redis ran the start script but its reply never arrived (Redis went away meanwhile): the jobs it
    registered as started for this worker, which no thread runs, go back to the front of their queue
    once Redis answers, instead of waiting a minute and a half to be found abandoned (and counted as a
    failed attempt); then each runs once."""
    settings = _settings(tmp_path, redis_url)
    ids = enqueue(settings, ["a", "b", "c"])
    w = worker(settings, concurrency=2)
    real = w._scripts.start

    def start_then_lose_the_reply(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)  # Redis does it ...
        w._scripts.start = real  # type: ignore[method-assign]
        raise redis.ConnectionError("Connection closed by server.")  # ... and the reply is lost

    w._scripts.start = start_then_lose_the_reply  # type: ignore[method-assign]
    with pytest.raises(redis.ConnectionError):
        w._dequeue(2, block=None)
    q = queue(redis_url)
    started = StartedJobRegistry(queue=q)
    assert sorted(started.get_job_ids()) == sorted(ids[:2])
    assert q.get_job_ids() == ids[2:]

    w._recover_lost_takes()
    assert started.get_job_ids() == []
    assert q.get_job_ids() == ids  # back at the front, once each
    for job in Job.fetch_many(ids[:2], q.connection, serializer=JSONSerializer):
        assert job is not None and job.get_status() == JobStatus.QUEUED
        assert job.get_executions() == []

    worker(settings, concurrency=2).work(burst=True)  # (that worker's name is registered: a new one)
    assert sorted(FinishedJobRegistry(queue=q).get_job_ids()) == sorted(ids)
    calls = [item.decode().split("|")[0] for item in q.connection.lrange(CALLS_KEY, 0, -1)]
    assert sorted(calls) == ["m1@test", "m2@test", "m3@test"]  # each message once


def test_a_dependent_job_runs_once_its_parent_is_acknowledged_in_a_batch(tmp_path, redis_url):
    """The batched acknowledgement reads a job's dependents in its own transaction and hands them to
    RQ's enqueue_dependents: the dependent runs, both end finished, none is left deferred."""
    settings = _settings(tmp_path, redis_url)
    q = queue(redis_url)
    parent = q.enqueue("builtins.len", [1])
    child = q.enqueue("builtins.len", [1, 2], depends_on=parent)
    assert child.get_status() == JobStatus.DEFERRED
    worker(settings).work(burst=True)
    assert parent.get_status() == JobStatus.FINISHED and parent.return_value() == 1
    assert child.get_status() == JobStatus.FINISHED and child.return_value() == 2
    assert q.deferred_job_registry.get_job_ids() == []


@pytest.mark.timeout(60)
def test_handlers_stuck_past_their_timeout_in_every_slot_stop_the_worker(tmp_path, redis_url):
    """time.sleep(3600) in C never receives the JobTimeoutException: each such job leaves a thread
    behind. Once every slot's worth is stuck the worker stops (not a burst run: without the stop this
    waits for work for ever and the test times out), so its supervisor can start a fresh process."""
    settings = _settings(tmp_path, redis_url, job_timeout=1)
    ids = enqueue(settings, ["hang-1", "hang-2"] + [f"sleep-0.1-{i}" for i in range(4)])
    w = worker(settings, concurrency=2)
    w.work(burst=False)
    assert w.stuck
    q = queue(redis_url)
    assert set(ids[:2]) <= set(FailedJobRegistry(queue=q).get_job_ids())
    assert StartedJobRegistry(queue=q).get_job_ids() == []


def test_a_failing_job_reaches_sentry_with_its_job_tags_and_no_message_bytes(tmp_path, redis_url):
    """The thread worker runs jobs through RQ's perform_job, which Sentry's RQ integration wraps in a
    scope of its own: a job that fails for good is one event, tagged with its job id and (from
    workers.jobs, since Sentry leaves the job's arguments out) its mailbox and reply key, the raw
    message nowhere in it."""
    import base64
    import json

    import sentry_sdk

    from mailroom import sentry
    from tests.unit.test_ops_sentry import Capture

    settings = _settings(tmp_path, redis_url, sentry_dsn="https://public@o0.ingest.sentry.io/1")
    (failing,) = enqueue(settings, ["fail-1"])
    raw = queue(redis_url).fetch_job(failing).args[0]["raw"]
    transport = Capture()
    assert sentry.init(settings, "worker", with_rq=True, transport=transport)
    try:
        worker(settings).work(burst=True)
        sentry_sdk.flush()
    finally:
        # Off, and without the RQ integration: its patched enqueue would add trace headers to the
        # meta of jobs later tests enqueue.
        sentry_sdk.init(dsn=None, default_integrations=False, auto_enabling_integrations=False)
    items = [item for envelope in transport.envelopes for item in envelope.items]
    events = [json.loads(item.payload.get_bytes()) for item in items if item.type == "event"]
    assert len(events) == 1, events
    (event,) = events
    assert event["tags"]["job_id"] == failing
    assert event["tags"]["reply_key"] == "fail-1" and event["tags"]["mailbox"] == "support"
    assert "handler failed on fail-1" in json.dumps(event["exception"])
    text = json.dumps(event)
    assert raw not in text and base64.b64decode(raw)[:40].decode() not in text
    assert FailedJobRegistry(queue=queue(redis_url)).get_job_ids() == [failing]
