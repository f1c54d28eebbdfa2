"""The worker process, composed: settings in, an RQ worker on the mailboxes' queues out.

``run_worker(settings)`` is what ``mailroom worker`` calls; a program can call it the same way. The
job function gets the settings handed over here (``preload``), not through the environment; a plain
``rq worker`` still works, with the job function reading ``$MAILROOM_CONFIG`` itself.

Two isolations (``worker.isolation``; docs/handlers.md says which to choose):

- ``thread`` (default): mailroom.threadworker.ThreadWorker, ``worker.concurrency`` jobs at once in
  one process, fetched and acknowledged in batches;
- ``fork``: RQ's own Worker, a fresh work-horse process per job, one job at a time.

Either way the process starts and stays up while Redis is unreachable (backing off with jitter; the
health server's /readyz is false meanwhile, /healthz true) and exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from redis.exceptions import RedisError
from rq import Queue
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from mailroom import sentry
from mailroom.config import Settings
from mailroom.health import WorkerProbe
from mailroom.malloc import limit_arenas
from mailroom.metrics import QueueCollector
from mailroom.queue import JOB_FUNCTION
from mailroom.redis_client import connect
from mailroom.rqworker import WORKER_TTL, MailroomWorker, heartbeat_age, preload_jobs
from mailroom.threadworker import Backoff, ThreadWorker
from mailroom.web import HealthServer

log = logging.getLogger("rq.worker")


@dataclass
class WorkerRef:
    """The worker the health server reports on (fork isolation makes a new one after an outage)."""

    worker: BaseWorker | None = None
    started: float = field(default_factory=time.monotonic)


def run_worker(
    settings: Settings, queues: Sequence[str] = (), burst: bool = False, health_port: int | None = None
) -> int:
    """Run the worker until SIGTERM (or, with ``burst``, until the queues are empty); the exit code."""
    limit_arenas()  # before the job threads allocate
    sentry.init(settings, "worker", with_rq=True)
    preload_jobs(JOB_FUNCTION, settings)
    names = list(queues) or settings.queues()
    current = WorkerRef()
    port = health_port if health_port is not None else settings.http_port
    if port is not None:
        serve_worker_health(settings, names, current, port)  # a daemon thread: it ends with the process
    level = settings.log_level.upper()
    if settings.worker.isolation == "thread":
        worker = ThreadWorker(
            _queues(settings, names),
            concurrency=settings.worker.concurrency,
            shutdown_timeout=settings.worker_shutdown_timeout(),
            serializer=JSONSerializer,
            worker_ttl=WORKER_TTL,
        )
        current.worker = worker
        worker.work(burst=burst, logging_level=level, with_scheduler=True)
        return 1 if worker.stuck else 0  # stuck handler threads: a new process is the only cure
    return _run_forking(settings, names, burst, level, current)


def _queues(settings: Settings, names: Sequence[str]) -> list[Queue]:
    connection = connect(settings.redis_url)
    return [Queue(name, connection=connection, serializer=JSONSerializer) for name in names]


def _run_forking(
    settings: Settings, names: Sequence[str], burst: bool, level: str, current: WorkerRef
) -> int:
    """RQ's forking Worker, restarted after a Redis outage it gave up on (it quits on some errors).

    RQ installs its signal handlers only once its worker has started; until then, and during the
    back-off between attempts, SIGTERM/SIGINT set ``stop`` here (and reach a worker being started),
    so a signal while Redis is away is an exit 0, not death by the default action."""
    backoff = Backoff()
    stop: list[int] = []  # the signal, once one came (a flag a handler can set without a lock)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)
        worker = current.worker
        if worker is not None:
            worker._stop_requested = True  # RQ's loop checks it before each dequeue

    def back_off(pause: float) -> None:
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        deadline = time.monotonic() + pause
        while not stop and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))

    back_off(0)
    while not stop:
        current.worker = None
        try:
            worker = MailroomWorker(
                _queues(settings, names), serializer=JSONSerializer, worker_ttl=WORKER_TTL
            )
            current.worker = worker
            if stop:
                break
            worker.work(burst=burst, with_scheduler=True, logging_level=level)
        except RedisError as exc:
            pause = backoff.next()
            log.warning("Redis unavailable (%s: %s), retrying in %.1f s", type(exc).__name__, exc, pause)
            back_off(pause)
            continue
        if burst or worker._shutdown_requested_date is not None or worker._stop_requested:
            return 0
        pause = backoff.next()  # RQ's loop quit on an error it logged (a Redis timeout): start again
        log.warning("Worker %s: stopped on an error, restarting in %.1f s", worker.name, pause)
        back_off(pause)
    log.info("Worker: stop requested while Redis was unavailable, quitting")
    return 0


def _liveness(current: WorkerRef) -> Callable[[], float | None]:
    def age() -> float | None:
        worker = current.worker
        if isinstance(worker, ThreadWorker):
            return max(0.0, time.monotonic() - worker.last_turn)
        if worker is None:
            return None
        return heartbeat_age(worker) if worker.last_heartbeat is not None else None

    return age


def serve_worker_health(
    settings: Settings, names: Sequence[str], current: WorkerRef, port: int
) -> HealthServer:
    """/healthz: the worker loop turned recently (it does while Redis is away); /readyz: Redis PING."""
    connection = connect(settings.redis_url)
    probe = WorkerProbe(_liveness(current), connection, bound=WORKER_TTL + 60, started=current.started)
    return HealthServer(port, probe, [QueueCollector(connection, list(names))]).start()
