"""The RQ worker classes ``mailroom worker`` runs: RQ's, plus job metrics, history and a liveness signal.

RQ's ``Worker`` forks a work horse per job, so counters incremented inside the job would die with the
horse. These classes count in the parent instead, from the job's status once it has run: succeeded,
failed (it is in the failed registry) or retried (RQ queued or scheduled it again); the same outcome
updates the message's status in ``mailroom history`` (handled, or failed with the error's last line).
"""

from __future__ import annotations

import importlib
import time
from datetime import UTC
from typing import Any

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.worker import BaseWorker

from mailroom import history, metrics
from mailroom.config import Settings

WORKER_TTL = 60  # seconds: RQ heartbeats at least this often while idle (it blocks dequeue_timeout = 45 s)


def outcome(job: Job) -> str:
    try:
        status = job.get_status(refresh=True)
    except NoSuchJobError:
        return "succeeded"  # result_ttl 0: a finished job is deleted at once
    if status == JobStatus.FINISHED:
        return "succeeded"
    if status == JobStatus.FAILED:
        return "failed"
    if status in (JobStatus.QUEUED, JobStatus.SCHEDULED):
        return "retried"
    return str(status)


class _Observed:
    """Mixed into an RQ worker class: time each job and count its outcome."""

    def execute_job(self, job: Job, queue: Queue) -> Any:
        started = time.perf_counter()
        try:
            return super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            metrics.JOB_SECONDS.labels(queue.name).observe(time.perf_counter() - started)
            try:
                result = outcome(job)
                record_history(job, result)
            except RedisError:
                result = "unknown"
            metrics.JOBS.labels(queue.name, result).inc()


class MailroomWorker(_Observed, Worker):
    """Forks a work horse per job (RQ's default); SIGTERM is RQ's warm shutdown."""


class MailroomSimpleWorker(_Observed, SimpleWorker):
    """Runs jobs in its own process (tests, --burst debugging)."""


def preload_jobs(job_function: str, settings: Settings) -> None:
    """Import the job function's module by name (mailroom never imports ``workers`` directly) and run its
    ``preload(settings)``: the job module gets the process's settings as an argument, and the work
    horses RQ forks inherit a configured job module instead of loading it."""
    module = importlib.import_module(job_function.rpartition(".")[0])
    preload = getattr(module, "preload", None)
    if callable(preload):
        preload(settings)


def heartbeat_age(worker: BaseWorker) -> float | None:
    """Seconds since the worker loop last told Redis it is alive (None before its first heartbeat)."""
    last = worker.last_heartbeat
    if last is None:
        return None
    if last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    return max(0.0, time.time() - last.timestamp())


_HISTORY = {
    "succeeded": history.Status.HANDLED,
    "failed": history.Status.FAILED,
    "retried": history.Status.FAILED,
}


def record_history(job: Job, result: str) -> None:
    """The job's new status in `mailroom history` (nothing if the message has no record)."""
    status = _HISTORY.get(result)
    if status is None:
        return
    if status is history.Status.HANDLED and _skipped(job):
        status = history.Status.SKIPPED
    error = None
    if status is history.Status.FAILED:
        latest = job.latest_result()
        error = last_line(latest.exc_string) if latest is not None and latest.exc_string else None
        if result == "retried":
            error = f"{error or 'failed'} (will be retried)"
    history.set_status(job.connection, job.id, status, error)


def _skipped(job: Job) -> bool:
    value = job.return_value()
    return isinstance(value, dict) and value.get("skipped") == "auto_reply"


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
