"""An RQ worker that runs N jobs at once in threads, fetching and acknowledging them in batches.

RQ's ``Worker`` forks a work horse per job and runs one job at a time; ``SimpleWorker`` does not fork
but still runs one job at a time and spends about ten Redis round trips on each. This worker keeps RQ's
data model and semantics and changes only how the work is scheduled:

- the main thread takes a job for each free slot and registers them as started in one round trip
  (mailroom.jobscripts' start script: each job gets RQ's Execution, its StartedJobRegistry entry and
  ``started`` status, exactly what RQ writes for one job; a blocking BLMOVE to the queue's
  intermediate list, as RQ's, only when nothing is queued). A slot is one of the ``concurrency`` job
  threads: it frees when its job's function returns, while the job's success waits for its batch
  acknowledgement. StartedJobRegistry may so hold, besides the jobs running, finished ones not yet
  acknowledged (at most ``concurrency`` more: the worker takes no job while that many wait). When
  slots free up, the main thread waits COALESCE for more to free before taking jobs, so that short
  jobs come several to a round trip, but only while the process is CPU-bound (see ``_coalesce``);
- ``concurrency`` threads run the jobs through RQ's own ``perform_job`` (so Sentry's RQ integration,
  exception handlers, failure handling and retries are RQ's);
- an acknowledging thread writes the successes of all jobs that finished meanwhile in one script call
  (finished status, Result, FinishedJobRegistry, execution cleanup, worker counters, history);
  failures, ``Retry`` results, callbacks, repeats, rate limits, dependents and ``result_ttl`` 0 take
  RQ's own path;
- ``job_timeout`` is enforced by the main thread: a job past it is failed (and retried per its
  policy) at once, its thread is given a JobTimeoutException and left behind, and a new thread takes
  its place, so a hung handler never holds up the others. A handler blocked outside Python (a C call
  without a timeout) cannot be interrupted: once ``concurrency`` such threads are stuck, the worker
  stops as on SIGTERM and ``stuck`` says why (``mailroom worker`` exits 1, so its supervisor starts a
  fresh process instead of threads piling up);
- SIGTERM: no new jobs; running ones get ``shutdown_timeout`` seconds to finish, then are put back at
  the front of their queue (at-least-once: they run again elsewhere). A second signal does that at once;
- Redis unreachable, at start or later: the worker backs off with jitter and carries on when Redis is
  back; finished jobs are acknowledged then (none is left in StartedJobRegistry). It exits only on a
  signal (or, with ``--burst``, when the queues are empty).

On SIGTERM, jobs that finished but were not acknowledged yet are acknowledged before the worker exits.
A SIGKILLed worker's running jobs, and those finished but not yet acknowledged, stay in
StartedJobRegistry until their heartbeat expires; RQ's registry maintenance (run every minute here)
then retries them per their policy (so a finished one may run again: at-least-once), and ids a dead
worker had popped but not yet registered are put back from the intermediate list (see
``_recover_popped``). A start script whose reply Redis never delivered (it went away meanwhile) may
still have registered its jobs as started: once Redis answers again this worker looks for its own
execution ids from that call and puts those jobs back at the front of their queue at once, instead of
leaving them to expire as abandoned (see ``_recover_lost_takes``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType, TracebackType
from typing import Any, cast
from uuid import uuid4

from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError
from rq import Queue
from rq import scheduler as rq_scheduler
from rq.exceptions import NoSuchJobError, StopRequested
from rq.executions import Execution
from rq.job import UNEVALUATED, Job, JobStatus, Retry
from rq.scheduler import ForkProcess, RQScheduler
from rq.timeouts import BaseDeathPenalty, JobTimeoutException
from rq.utils import current_timestamp, now, utcformat
from rq.worker import BaseWorker, WorkerStatus

from mailroom import history, jobscripts, metrics
from mailroom.rqworker import record_history

log = logging.getLogger("rq.worker")

DEFAULT_CONCURRENCY = 10
DEFAULT_SHUTDOWN_TIMEOUT = 25.0
MAINTENANCE_INTERVAL = 60  # seconds: abandoned jobs of dead workers are found within a minute of expiry
RECOVER_AFTER = 5.0  # seconds an id may sit popped but unregistered before it is put back in its queue
COALESCE = 0.002  # seconds to wait for more free slots before taking jobs for them (CPU-bound)
CPU_SAMPLE = 0.05  # seconds over which the process's CPU share is measured
CPU_BOUND = 0.75  # share of a core above which the worker counts as CPU-bound
WAIT = 1  # seconds the main loop blocks at most while jobs are running (timeouts, heartbeats, stop)


class _NoDeathPenalty(BaseDeathPenalty):
    """RQ wraps each job in a death penalty; SIGALRM only works in the main thread, and a timer thread
    per job costs more than the job. The main thread enforces ``job_timeout`` instead."""

    def setup_death_penalty(self) -> None:
        pass

    def cancel_death_penalty(self) -> None:
        pass


@dataclass(eq=False)
class Running:
    """One job between its registration as started and its acknowledgement."""

    job: Job
    queue: Queue
    execution: Execution
    timeout: float  # seconds; inf without one
    deadline: float = float("inf")  # monotonic, from when a thread picks the job up
    started: float = field(default_factory=time.perf_counter)
    thread: int | None = None
    counted: bool = True  # still counted among the executing (a timed-out job stops counting)
    settled: bool = False  # acknowledged, failed, timed out or put back: nothing else may write it
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self) -> bool:
        """True for the first caller only: the one that writes the job's outcome."""
        with self.lock:
            if self.settled:
                return False
            self.settled = True
            return True


class Backoff:
    """Exponential back-off with full jitter, capped: 0.5, 1, 2 ... 30 s (each a random part of it)."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap, self.attempt = first, cap, 0

    def next(self) -> float:
        bound = min(self.cap, self.first * 2**self.attempt)
        self.attempt += 1
        return random.uniform(bound / 2, bound)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self.attempt = 0


class ThreadWorker(BaseWorker):
    death_penalty_class = _NoDeathPenalty
    log_result_lifespan = False

    def __init__(
        self,
        queues: Sequence[Queue],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        # prepare_for_work=False: RQ would talk to Redis in the constructor (CLIENT SETNAME), and the
        # worker must start while Redis is away. bootstrap() does it, with retries.
        super().__init__(queues, prepare_for_work=False, maintenance_interval=MAINTENANCE_INTERVAL, **kwargs)
        import os
        import socket

        self.hostname, self.pid = socket.gethostname(), os.getpid()
        self.concurrency = concurrency
        self.shutdown_timeout = shutdown_timeout
        self.last_turn = time.monotonic()  # liveness: the main loop turned (also while Redis is away)
        self.redis_ok = False  # readiness
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        # Job threads wait on their own condition (same lock): waking all of them each time a job
        # settles cost more than the jobs (a herd of threads contending for the lock and the GIL).
        self._ready = threading.Condition(lock)
        # The acknowledging thread has its own too, and the main thread (_cond) is woken only when
        # slots free up: a wake-up per finished job for threads that had nothing to do with it cost
        # two context switches a job.
        self._acks = threading.Condition(lock)
        self._closing = threading.Event()
        self._blocking = False  # the main thread waits on Redis for a job with nothing running
        self._tasks: list[Running] = []  # handed to threads, under _cond
        self._running: dict[str, Running] = {}  # job id -> task, under _cond
        self._executing = 0  # tasks in threads, under _cond
        self._wake_at = concurrency + 1  # free slots at which a job thread wakes the main thread
        self._cpu_sample = (time.monotonic(), time.process_time())
        self._cpu_bound = True  # the process used most of a core lately (see _coalesce)
        self._done: list[Running] = []  # successes waiting for their acknowledgement, under _cond
        self._retired: set[int] = set()  # thread idents left behind with a timed-out job
        self.stuck = False  # stopped because too many threads hang past their job's timeout
        self._local = threading.local()
        self._threads: list[threading.Thread] = []
        self._cold = False
        self._stop_at: float | None = None
        self._popped: dict[str, Queue] = {}  # ids taken from a queue, not yet registered as started
        # Start-script calls a Redis error cut short: (queue, execution ids sent), looked at once it is back.
        self._lost_takes: list[tuple[Queue, list[str]]] = []
        self._recover_at: float | None = 0.0  # when to put back what dead workers popped (0: at start)
        self._suspects: dict[str, set[str]] = {}
        self._backoff = Backoff()
        self._last_heartbeats = time.monotonic()
        self._scripts = jobscripts.Scripts(self.connection)
        self._keys = jobscripts.WorkerKeys(
            self.name, self.key, self.job_monitoring_interval, self.worker_ttl + 60
        )
        self._birth_tried = False  # a start attempt Redis cut short may have registered this name

    # ---- start, loop, stop ---------------------------------------------------------------------

    def work(  # type: ignore[override]
        self,
        burst: bool = False,
        logging_level: str | None = None,
        with_scheduler: bool = True,
        **_options: Any,
    ) -> bool:
        self._install_signal_handlers()
        if not self._until_redis_answers(lambda: self._start(burst, logging_level, with_scheduler)):
            return False
        for _ in range(self.concurrency):
            self._add_thread()
        acks = threading.Thread(target=self._acknowledge_loop, name="rq-acks", daemon=True)
        acks.start()
        try:
            while not self._stop_requested:
                self.last_turn = time.monotonic()
                try:
                    more = self._turn(burst)
                    self.redis_ok = True
                    self._backoff.reset()
                except RedisError as exc:
                    self._redis_away(exc)
                    continue
                except StopRequested:
                    break
                if not more:
                    log.info("Worker %s: done, quitting", self.name)
                    break
            self._finish_running()
        finally:
            self._closing.set()
            with self._cond:
                self._cond.notify_all()
                self._ready.notify_all()
                self._acks.notify_all()
            acks.join(timeout=5)
            self._until_redis_answers(self.teardown, give_up=5.0)
        return True

    def _start(self, burst: bool, logging_level: str | None, with_scheduler: bool) -> None:
        self._set_ip_address(self.connection)
        self.bootstrap(logging_level)
        self.redis_ok = True
        if with_scheduler:
            self._start_scheduler(burst, logging_level)

    def register_birth(self) -> None:
        """RQ's, but a retry after Redis died mid-start replaces the registration the cut-short
        attempt may have made under this worker's own name (RQ would refuse it as another worker)."""
        if self._birth_tried:
            self.connection.delete(self.key)
        self._birth_tried = True
        super().register_birth()  # type: ignore[no-untyped-call]

    def subscribe(self) -> None:
        """RQ's; a retried start first closes the subscription a cut-short attempt opened."""
        if self.pubsub_thread is not None:
            self.pubsub_thread.stop()  # no UNSUBSCRIBE: Redis may be away; closing drops the channel
            self.pubsub_thread.join(timeout=1)
            self.pubsub.close()
            self.pubsub_thread = None
        super().subscribe()  # type: ignore[no-untyped-call]

    def _start_scheduler(self, burst: bool = False, logging_level: str | None = "INFO", *_: Any) -> None:
        """RQ's, with a scheduler process that logs its own death (see _Scheduler)."""
        self.scheduler = _Scheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()  # type: ignore[no-untyped-call]
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
                finally:
                    self.scheduler.release_locks()  # type: ignore[no-untyped-call]
                    self.scheduler.register_death()
            else:
                self.scheduler.start()

    def _until_redis_answers(self, call: Callable[[], None], give_up: float | None = None) -> bool:
        """Run ``call`` until it gets through to Redis (False if stopped or ``give_up`` s passed)."""
        deadline = time.monotonic() + give_up if give_up is not None else None
        while True:
            self.last_turn = time.monotonic()
            try:
                call()
                return True
            except RedisError as exc:
                if self._stop_requested or (deadline is not None and time.monotonic() > deadline):
                    return False
                self._redis_away(exc)

    def _redis_away(self, exc: RedisError) -> None:
        self.redis_ok = False
        pause = self._backoff.next()
        log.warning(
            "Worker %s: Redis unavailable (%s: %s), retrying in %.1f s",
            self.name,
            type(exc).__name__,
            exc,
            pause,
        )
        self._recover_at = time.monotonic() + RECOVER_AFTER  # ids popped meanwhile may be stranded
        self._sleep(pause)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))
            self.last_turn = time.monotonic()

    def _turn(self, burst: bool) -> bool:
        """One round of the main loop; False when a burst worker has nothing left to do."""
        self._put_back_popped()
        self._recover_lost_takes()
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
        self._recover_popped()
        self._enforce_timeouts()
        self._stop_if_stuck()
        self._maintain_heartbeats()
        # A slot is a job thread: it frees when the job's function returns, not when its success is
        # acknowledged (the acknowledging thread writes that meanwhile, for a batch at a time). So
        # StartedJobRegistry may hold, besides the ``concurrency`` jobs running, some finished ones
        # waiting for their acknowledgement (at most as many again: see _free).
        with self._cond:
            free = self._free()
            busy = bool(self._running)
        half = max(1, self.concurrency // 2)
        if busy and free < half:
            with self._cond:
                # Once a slot is free, wait COALESCE for more to free up: short jobs then still come
                # several to a round trip, and the slot of a long one (a webhook's request) is taken
                # again within milliseconds. Job threads wake this thread only when it waits for
                # that many free slots (_wake_at), not at every job.
                if free <= 0:
                    self._wake_at = 1
                    self._cond.wait(WAIT)
                deadline = time.monotonic() + self._coalesce()
                self._wake_at = half
                while self._free() < half and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                self._wake_at = self.concurrency + 1
                free = self._free()
            if free <= 0:
                return True
        if busy or burst:
            jobs = self._dequeue(free, block=WAIT if busy else None)
        else:
            self.set_state(WorkerStatus.IDLE)
            self.heartbeat()
            self._blocking = True  # a signal now raises StopRequested out of the wait
            try:
                jobs = self._dequeue(free, block=self.dequeue_timeout)
            finally:
                self._blocking = False
        if jobs:
            self._start_jobs(jobs)
            return True
        return not (burst and not busy)

    def _coalesce(self) -> float:
        """How long to wait for more slots to free up before taking jobs: COALESCE while the process
        uses most of a core, where fewer round trips a job is what lets more jobs run (short jobs:
        the log handler's); none when it does not, where jobs wait on something else and an empty
        slot is what costs (a webhook against a 20 ms receiver: slots freed every ~2.5 ms, so the
        wait kept each slot empty ~2 ms a job of ~24 ms, at half a core of CPU)."""
        moment, cpu = time.monotonic(), time.process_time()
        if moment - self._cpu_sample[0] >= CPU_SAMPLE:
            share = (cpu - self._cpu_sample[1]) / (moment - self._cpu_sample[0])
            self._cpu_bound = share >= CPU_BOUND
            self._cpu_sample = (moment, cpu)
        return COALESCE if self._cpu_bound else 0.0

    def _finish_running(self) -> None:
        """Warm shutdown: wait for the running jobs up to shutdown_timeout, then put the rest back."""
        deadline = time.monotonic() + (0 if self._cold else self.shutdown_timeout)
        with self._cond:
            waiting, self._tasks = self._tasks, []  # started but not picked up by a thread: not begun
            for task in waiting:
                task.counted = False
                self._executing -= 1
        if waiting:
            self._until_redis_answers(lambda: self._requeue(waiting), give_up=10.0)
        with self._cond:
            if self._running:
                log.info("Worker %s: waiting for %d running job(s)", self.name, len(self._running))
            while self._running and not self._cold and time.monotonic() < deadline:
                self.last_turn = time.monotonic()
                self._cond.wait(0.2)
            left = list(self._running.values())
        if left:
            self._until_redis_answers(lambda: self._requeue(left), give_up=10.0)

    def _requeue(self, tasks: list[Running]) -> None:
        """Put unfinished jobs back at the front of their queues (their threads die with the process)."""
        claimed = [task for task in tasks if task.settled is False and task.claim()]
        with self.connection.pipeline() as pipe:
            for task in reversed(claimed):  # each goes to the front: the first one ends up first
                self.cleanup_execution(task.job, pipeline=pipe, execution=task.execution)
                task.job.set_status(JobStatus.QUEUED, pipeline=pipe)
                task.queue.push_job_id(task.job.id, pipeline=pipe, at_front=True)
            pipe.execute()
        for task in claimed:
            log.warning(
                "Worker %s: job %s put back in %s unfinished", self.name, task.job.id, task.queue.name
            )
            self._forget(task)

    # ---- signals ---------------------------------------------------------------------------------

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """Warm shutdown; a second signal is a cold one. Only flags here: the loop acts on them."""
        if self._stop_requested:
            self._cold = True
            return
        self._shutdown_requested_date = now()
        self._stop_requested = True
        log.info("Worker %s: warm shut down requested", self.name)
        if self._blocking:
            raise StopRequested  # out of a long BLMOVE with nothing running (as RQ's worker does)

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        self._cold = True

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    # ---- taking jobs -----------------------------------------------------------------------------

    def _dequeue(self, n: int, block: int | None) -> list[Running]:
        """Up to ``n`` jobs, taken and registered as started in one round trip a queue (the start
        script). ``block``: seconds to wait for one when none is queued (None: don't); that one is
        moved to the queue's intermediate list by BLMOVE, as RQ does, then registered."""
        found: list[Running] = []
        for queue in self._ordered_queues:  # in order: a later queue only gets what is left
            want = n - len(found)
            if want <= 0:
                break
            found += self._take(queue, want)
        if not found and block is not None and not self._stop_requested:
            for job_id, queue in self._block_for_one(block):
                self._popped[job_id] = queue
                found += self._take(queue, 1, [job_id])
                self._popped.pop(job_id, None)
        return found

    def _take(self, queue: Queue, want: int, job_ids: list[str] | None = None) -> list[Running]:
        """Take ``want`` jobs from ``queue`` (or ``job_ids`` from its intermediate list) and register
        them as started; the Job and Execution objects RQ would hold for them."""
        moment = now()
        execution_ids = [uuid4().hex for _ in range(want)]
        try:
            started = self._scripts.start(
                queue.key if job_ids is None else queue.intermediate_queue_key,
                queue.started_job_registry.key,
                self._keys,
                moment,
                execution_ids,
                job_ids,
            )
        except RedisError:
            self._lost_takes.append((queue, execution_ids))  # it may have run: see _recover_lost_takes
            raise
        self.last_heartbeat = moment
        tasks = []
        version = self.get_redis_server_version()  # type: ignore[no-untyped-call]
        for job_id, execution_id, fields in started:
            job = Job(job_id, connection=self.connection, serializer=self.serializer)
            job.restore(fields)
            job.redis_server_version = version
            job.worker_name = self.name
            job.last_heartbeat = job.started_at = moment
            job._status = JobStatus.STARTED
            execution = Execution(execution_id, job_id, self.connection, worker_name=self.name)
            execution.created_at = execution.last_heartbeat = moment
            execution._job = job
            timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT
            tasks.append(Running(job, queue, execution, timeout if timeout and timeout > 0 else float("inf")))
        return tasks

    def _block_for_one(self, timeout: int) -> list[tuple[str, Queue]]:
        queues = self._ordered_queues
        if len(queues) == 1:
            job_id = self.connection.blmove(queues[0].key, queues[0].intermediate_queue_key, timeout)
            return [(_text(job_id), queues[0])] if job_id is not None else []
        # Several queues: BLMOVE watches one list, so block on all with BLPOP (as RQ's Worker does) and
        # record the id in the intermediate list right away.
        reply = self.connection.blpop([q.key for q in queues], max(1, timeout))
        if reply is None:
            return []
        key, job_id = _text(reply[0]), _text(reply[1])
        queue = next(q for q in queues if q.key == key)
        self.connection.rpush(queue.intermediate_queue_key, job_id)
        return [(job_id, queue)]

    def _start_jobs(self, tasks: list[Running]) -> None:
        """Hand a batch registered as started to the threads."""
        with self._cond:
            for task in tasks:
                self.executions[task.execution.id] = task.execution
                self._running[task.job.id] = task
            self._executing += len(tasks)
            self._tasks.extend(tasks)
            self._ready.notify(len(tasks))

    def _put_back_popped(self) -> None:
        """Ids this worker popped but could not register (Redis went away): back to their queues."""
        if not self._popped:
            return
        with self.connection.pipeline() as pipe:
            for job_id, queue in self._popped.items():
                pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                pipe.lpush(queue.key, job_id)
            pipe.execute()
        self._popped.clear()

    def _recover_lost_takes(self) -> None:
        """Jobs a start-script call registered as started for this worker although its reply never
        arrived (Redis went away after running it): no thread runs them, so put them back at the front
        of their queue now. RQ would find them only once their heartbeat expired (a minute and a half
        or more) and then count them as failed attempts."""
        if not self._lost_takes:
            return
        for queue, execution_ids in self._lost_takes:
            wanted = set(execution_ids)
            registered = cast(list[bytes], self.connection.zrange(queue.started_job_registry.key, 0, -1))
            members = [_text(member) for member in registered]
            lost = [m.rpartition(":") for m in members if m.rpartition(":")[2] in wanted]
            with self.connection.pipeline() as pipe:
                for job_id, _, execution_id in reversed(lost):  # each to the front (the registry's order)
                    try:
                        job = Job.fetch(job_id, connection=self.connection, serializer=self.serializer)
                    except NoSuchJobError:  # deleted meanwhile: only its registry entry is left
                        pipe.zrem(queue.started_job_registry.key, f"{job_id}:{execution_id}")
                        continue
                    execution = Execution(execution_id, job_id, self.connection, worker_name=self.name)
                    self.cleanup_execution(job, pipeline=pipe, execution=execution)
                    job.set_status(JobStatus.QUEUED, pipeline=pipe)
                    pipe.lrem(queue.key, 0, job_id)  # once only, should the blocking path have put it back
                    queue.push_job_id(job_id, pipeline=pipe, at_front=True)
                pipe.execute()
            for job_id, _, _ in lost:
                log.warning("Worker %s: job %s was started but its reply lost: put back", self.name, job_id)
        self._lost_takes.clear()

    def _recover_popped(self) -> None:
        """Ids in an intermediate list that no worker registered within RECOVER_AFTER seconds (their
        worker died between LMOVE and registration, or Redis lost its reply): back to their queues.
        RQ's own maintenance does the same after a minute, but fails them instead of requeueing."""
        if self._recover_at is None or time.monotonic() < self._recover_at:
            return
        stranded: dict[str, set[str]] = {}
        for queue in self.queues:
            ids = {_text(i) for i in self.connection.lrange(queue.intermediate_queue_key, 0, -1)}
            with self._cond:
                ids -= self._running.keys()
            started = {job_id for job_id in ids if job_id in queue.started_job_registry}
            stranded[queue.name] = ids - started
        if not self._suspects:
            self._suspects = stranded  # seen once: look again in RECOVER_AFTER seconds
            self._recover_at = time.monotonic() + RECOVER_AFTER
            if not any(stranded.values()):
                self._suspects, self._recover_at = {}, None
            return
        for queue in self.queues:
            for job_id in stranded.get(queue.name, set()) & self._suspects.get(queue.name, set()):
                with self.connection.pipeline() as pipe:
                    pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                    pipe.lpush(queue.key, job_id)
                    removed, _ = pipe.execute()
                if not removed:
                    self.connection.lpop(queue.key)  # someone else took it meanwhile: undo the push
                else:
                    log.warning("Worker %s: job %s was popped but never started: put back", self.name, job_id)
        self._suspects, self._recover_at = {}, None

    # ---- running jobs ----------------------------------------------------------------------------

    def _add_thread(self) -> None:
        thread = threading.Thread(target=self._thread_loop, name=f"rq-job-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _thread_loop(self) -> None:
        me = threading.get_ident()
        while me not in self._retired:
            with self._cond:
                # After a stop request no job begins: the waiting ones go back to their queue.
                while not self._closing.is_set() and (self._stop_requested or not self._tasks):
                    self._ready.wait(0.2 if self._stop_requested else 0.5)
                if self._closing.is_set() or self._stop_requested:
                    return
                task = self._tasks.pop(0)
            task.thread = me
            task.deadline = time.monotonic() + task.timeout
            self._local.task = task
            try:
                self.perform_job(task.job, task.queue, task.execution)
            except BaseException:
                log.exception("Worker %s: job %s could not be finished", self.name, task.job.id)
            finally:
                self._local.task = None
                self._uncount(task)

    def _uncount(self, task: Running) -> None:
        with self._cond:
            if task.counted:
                task.counted = False
                self._executing -= 1
                if self.concurrency - self._executing >= self._wake_at:
                    self._cond.notify()

    def _free(self) -> int:
        """Slots free for new jobs (under _cond): threads not running one, as long as no more than
        ``concurrency`` finished jobs wait for their acknowledgement (Redis slow to take them: the
        worker does not run ahead of what it can acknowledge)."""
        return min(self.concurrency - self._executing, 2 * self.concurrency - len(self._running))

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """Done for the whole batch in _start_jobs."""

    def _finalize_success(self, job: Job, queue: Queue, execution: Execution, return_value: Any) -> None:
        task: Running = self._local.task
        if not task.claim():
            return  # timed out and failed meanwhile: the late result is dropped
        if isinstance(return_value, Retry) or _needs_rq_path(job, self.default_result_ttl):
            self._settle_with_rq(
                task, lambda: super(ThreadWorker, self)._finalize_success(job, queue, execution, return_value)
            )
            return
        job.ended_at = now()
        job._result = return_value
        job._status = JobStatus.FINISHED
        with self._cond:
            self._done.append(task)
            self._acks.notify()

    def _finalize_failure(
        self,
        job: Job,
        queue: Queue,
        execution: Execution,
        exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None],
    ) -> None:
        task: Running = self._local.task
        if not task.claim():
            return
        self._settle_with_rq(
            task, lambda: super(ThreadWorker, self)._finalize_failure(job, queue, execution, exc_info)
        )

    def _settle_with_rq(self, task: Running, write: Callable[[], None]) -> None:
        """RQ's own per-job outcome handling, retried while Redis is away."""
        backoff = Backoff()
        while True:
            try:
                write()
                break
            except RedisError as exc:
                if self._cold:
                    return
                pause = backoff.next()
                log.warning(
                    "Worker %s: Redis unavailable (%s), job %s outcome in %.1f s",
                    self.name,
                    exc,
                    task.job.id,
                    pause,
                )
                time.sleep(pause)
        self._observe(task, _outcome(task.job))
        self._forget(task)

    # ---- acknowledging ---------------------------------------------------------------------------

    def _acknowledge_loop(self) -> None:
        backoff = Backoff()
        while True:
            with self._cond:
                while not self._done and not self._closing.is_set():
                    self._acks.wait(0.5)
                batch, self._done = self._done, []
            stopping = self._closing.is_set()
            if batch:
                while True:
                    try:
                        self._acknowledge(batch)
                        backoff.reset()
                        break
                    except RedisError as exc:
                        if self._cold:
                            return
                        pause = backoff.next()
                        log.warning(
                            "Worker %s: Redis unavailable (%s), %d result(s) in %.1f s",
                            self.name,
                            exc,
                            len(batch),
                            pause,
                        )
                        time.sleep(pause)
            elif stopping:
                return

    def _acknowledge(self, batch: list[Running]) -> None:
        """RQ's handle_job_success for many jobs in one script call (see mailroom.jobscripts).

        A job hash gets only the fields that changed since it was started (job.save() would
        serialize and send the whole job again, message included). Whether a job has dependents is
        read inside the script, so none can be added unseen between the check and the finished
        status; those that have some are left to RQ's own handle_job_success, which enqueues them."""
        registries: list[tuple[str, str]] = []
        index: dict[str, int] = {}
        successes = []
        for task in batch:
            job, queue = task.job, task.queue
            q = index.get(queue.name)
            if q is None:
                q = index[queue.name] = len(registries)
                registries.append((queue.started_job_registry.key, queue.finished_job_registry.key))
            assert job.started_at is not None and job.ended_at is not None
            successes.append(
                jobscripts.Success(
                    job.id,
                    task.execution.id,
                    q,
                    utcformat(job.started_at),
                    utcformat(job.ended_at),
                    repr(task.execution.created_at.timestamp()),
                    repr(job.ended_at.timestamp()),
                    job.get_result_ttl(self.default_result_ttl),
                    jobscripts.serialized_result(job, job._result),
                    _handled(job).value,
                    # the job replaced its arguments (workers.jobs drops a handled message's bytes):
                    # stored as JSON, as mailroom.queue enqueues it (RQ reads it compressed or not)
                    job.data if job._data is UNEVALUATED else "",
                    repr((job.ended_at - job.started_at).total_seconds()),
                )
            )
        with self._cond:
            idle = len(self._running) == len(batch)
        deferred = self._scripts.acknowledge(self._keys, registries, successes, current_timestamp(), idle)
        acknowledged = [task for task in batch if task.job.id not in deferred]
        for task in acknowledged:
            self._observe(task, "succeeded")
        self._forget(*acknowledged)
        for task in batch:
            if task.job.id in deferred:
                self._settle_with_rq(task, lambda task=task: self._succeed_with_rq(task))  # type: ignore[misc]

    def _succeed_with_rq(self, task: Running) -> None:
        self.handle_job_success(task.job, task.queue, task.queue.started_job_registry, task.execution)
        history.set_status(self.connection, task.job.id, _handled(task.job))

    def _observe(self, task: Running, outcome: str) -> None:
        seconds, count = _metrics(task.queue.name, outcome)
        seconds.observe(time.perf_counter() - task.started)
        count.inc()
        if outcome != "succeeded":
            try:
                record_history(task.job, outcome)
            except RedisError:
                pass

    def _forget(self, *tasks: Running) -> None:
        with self._cond:
            for task in tasks:
                self._running.pop(task.job.id, None)
                self.executions.pop(task.execution.id, None)
            self._cond.notify_all()

    # ---- timeouts and heartbeats -----------------------------------------------------------------

    def _enforce_timeouts(self) -> None:
        moment = time.monotonic()
        with self._cond:
            late = [t for t in self._running.values() if t.deadline < moment and not t.settled]
        for task in late:
            if not task.claim():
                continue
            timeout = task.job.timeout or self.queue_class.DEFAULT_TIMEOUT
            if task.thread is not None:
                self._retired.add(task.thread)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(task.thread), ctypes.py_object(JobTimeoutException)
                )
                self._add_thread()
            self._uncount(task)
            task.job.ended_at = now()
            exc_string = f"JobTimeoutException: Task exceeded maximum timeout value ({timeout} seconds)"
            log.warning(
                "Worker %s: job %s exceeded its timeout (%s s), failed", self.name, task.job.id, timeout
            )
            task.job._status = JobStatus.FAILED
            self.handle_job_failure(task.job, task.queue, exc_string=exc_string, execution=task.execution)
            self._observe(task, _outcome(task.job))
            self._forget(task)

    def _stop_if_stuck(self) -> None:
        """Threads left behind by timed-out jobs normally end when their JobTimeoutException lands; one
        blocked in C never does. As many of those as there are slots: stop, and let a new process come."""
        if self.stuck or not self._retired:
            return
        stuck = sum(1 for t in self._threads if t.ident in self._retired and t.is_alive())
        if stuck >= self.concurrency:
            self.stuck = True
            log.error(
                "Worker %s: %d job threads still run handlers past their job_timeout; stopping so a new"
                " process can take over",
                self.name,
                stuck,
            )
            self._shutdown_requested_date = now()
            self._stop_requested = True

    def _maintain_heartbeats(self) -> None:
        if time.monotonic() - self._last_heartbeats < self.job_monitoring_interval:
            return
        with self._cond:
            running = [t for t in self._running.values() if not t.settled]
        for task in running:
            self.maintain_heartbeats(task.job, task.execution)
        self.heartbeat()
        self._last_heartbeats = time.monotonic()


class _Scheduler(RQScheduler):
    """RQ's scheduler process. When it dies (Redis went away) RQ logs why through logging, then
    multiprocessing would print the traceback again as plain text: exit quietly instead. The worker's
    maintenance starts a new one."""

    def start(self) -> BaseProcess:
        self._status = self.Status.STARTED
        self._connection = None  # a Redis client cannot cross the fork
        process = ForkProcess(target=_run_scheduler, args=(self,), name="Scheduler")
        process.start()
        self._process = process  # type: ignore[assignment]
        return process


def _run_scheduler(scheduler: RQScheduler) -> None:
    try:
        rq_scheduler.run(scheduler)  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - already logged by rq.scheduler.run
        sys.exit(1)


@functools.cache
def _metrics(queue: str, outcome: str) -> tuple[Histogram, Counter]:
    """The metrics' children for a queue and outcome (``labels()`` looks them up under a lock)."""
    return metrics.JOB_SECONDS.labels(queue), metrics.JOBS.labels(queue, outcome)


def _needs_rq_path(job: Job, default_result_ttl: int) -> bool:
    """Features the acknowledgement script does not write: RQ's own success path handles them."""
    ttl = job.get_result_ttl(default_result_ttl)
    return bool(
        job.success_callback
        or job.repeats_left
        or job.has_rate_limit
        or job.webhooks
        or job._dependency_ids
        or ttl is None
        or not (ttl > 0 or ttl == -1)
    )


def _outcome(job: Job) -> str:
    status = job.get_status(refresh=False)
    if status == JobStatus.FINISHED:
        return "succeeded"
    if status in (JobStatus.QUEUED, JobStatus.SCHEDULED):
        return "retried"
    return "failed"


def _handled(job: Job) -> history.Status:
    value = job._result
    if isinstance(value, dict) and value.get("skipped") == "auto_reply":
        return history.Status.SKIPPED
    return history.Status.HANDLED


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
