"""The measurements: one function per scenario, one run of one contender each, returning plain dicts.

Times are wall-clock (``time.time()``) so a timestamp a watcher logged and one taken here compare.
A drain is timed from the watcher's ``imap_connected`` (logged in, folder selected), so process start-up
and imports are not counted for either contender; "queued" is when the Redis list holds all N entries
(LLEN polled every 2 ms), "marked" when a second IMAP session's STATUS reports no UNSEEN message left
(polled every 2 ms once everything is queued, since marking always follows queueing).
"""

from __future__ import annotations

import itertools
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from imapclient import IMAPClient
from rq import Queue
from rq.serializers import JSONSerializer

from bench import messages
from bench.drain import REPO, Contender, Target, mailroom_argv, mailroom_config, start
from devstack import Dovecot, RedisServer

POLL = 0.002
MISSED_WAKEUP = 1.5  # seconds: a latency this long means the message waited for a later event
BIG_MAX_SIZE = 64 * 1024 * 1024


@dataclass
class Stack:
    """The private servers of one benchmark session, and helpers over them."""

    dovecot: Dovecot
    redis_server: RedisServer
    workdir: Path
    _users: Iterator[int] = field(default_factory=itertools.count)

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url)

    def new_user(self, prefix: str) -> Target:
        name = f"{prefix}{next(self._users)}"
        self.dovecot.add_user(name, "bench-" + uuid.uuid4().hex[:8])
        return self.target(name)

    def target(self, user: str) -> Target:
        account = self.dovecot.account(user)
        return Target(account.host, account.port, user, account.password, self.redis_server.url)

    @contextmanager
    def imap(self, target: Target) -> Iterator[Any]:
        client = IMAPClient(target.host, port=target.port, ssl=False, timeout=60)
        client.login(target.user, target.password)
        try:
            yield client
        finally:
            client.logout()

    def status(self, target: Target) -> dict[str, int]:
        """MESSAGES, UNSEEN, UIDNEXT of INBOX; also makes Dovecot index files delivered behind its back."""
        with self.imap(target) as client:
            status = client.folder_status("INBOX", [b"MESSAGES", b"UNSEEN", b"UIDNEXT"])
        return {k.decode().lower(): int(v) for k, v in status.items()}

    def deliver_done(self, target: Target, count: int) -> None:
        """``count`` small messages already flagged \\Seen, written straight into the Maildir's cur/."""
        maildir = self.dovecot.maildir(target.user)
        self.dovecot.deliver_files(target.user, [])  # creates the Maildir with the right owner
        cur = maildir / "cur"
        stamp, batch = int(time.time()), uuid.uuid4().hex[:12]
        uid, gid = self.dovecot.mail_uid, self.dovecot.mail_gid
        for i in range(count):
            path = cur / f"{stamp}.M{i}Q{batch}.bench:2,S"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, messages.done_filler(i))
                if os.geteuid() == 0:
                    os.fchown(fd, uid, gid)
            finally:
                os.close(fd)

    def expunge_from(self, target: Target, first_uid: int) -> None:
        with self.imap(target) as client:
            client.select_folder("INBOX")
            uids = client.search(["UID", f"{first_uid}:*"])
            uids = [u for u in uids if u >= first_uid]
            if uids:
                client.delete_messages(uids, silent=True)
                client.uid_expunge(uids)

    def reset_redis(self) -> None:
        self.redis.flushall()


def _wait(predicate: Any, timeout: float, what: str, contender: Contender | None = None) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        if contender is not None and contender.proc.poll() is not None:
            raise RuntimeError(f"{contender.kind} exited while waiting for {what}:\n{contender.log_tail()}")
        time.sleep(POLL)
    tail = contender.log_tail() if contender else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def _unseen(client: Any) -> int:
    return int(client.folder_status("INBOX", [b"UNSEEN"])[b"UNSEEN"])


# ---- 1 and 4: drain a backlog ------------------------------------------------------------------------


def drain(stack: Stack, kind: str, target: Target, n: int) -> dict[str, Any]:
    """Run ``kind`` on a mailbox holding ``n`` unseen messages (already indexed by Dovecot) until done."""
    stack.reset_redis()
    client_redis = stack.redis
    timeout = max(60.0, n / 50)
    contender = start(kind, target, stack.workdir)
    try:
        with stack.imap(target) as probe:
            connected = contender.connected_at()
            queued = _wait(lambda: client_redis.llen(contender.key) >= n, timeout, "queued", contender)
            marked = _wait(lambda: _unseen(probe) == 0, timeout, "marked", contender)
        time.sleep(0.3)
        memory = contender.memory()
        jobs = int(client_redis.llen(contender.key))
    finally:
        contender.stop()
    return {
        "n": n,
        "jobs": jobs,
        "queued_s": queued - connected,
        "marked_s": marked - connected,
        "queued_per_s": n / (queued - connected),
        "marked_per_s": n / (marked - connected),
        "steady_rss": memory["rss"],
        "peak_rss": memory["peak_rss"],
    }


def backlog(stack: Stack, kind: str, n: int) -> dict[str, Any]:
    """Scenario 1: a fresh mailbox with ``n`` benchmark messages waiting when the watcher starts."""
    target = stack.new_user(f"drain{kind[0]}")
    stack.dovecot.deliver_files(target.user, messages.messages(n))
    status = stack.status(target)
    assert status["unseen"] == n, status
    return drain(stack, kind, target, n)


def prepare_scaling(stack: Stack, done: int) -> Target:
    """A mailbox that already holds ``done`` handled (\\Seen) messages, indexed by Dovecot."""
    target = stack.new_user(f"scale{done}x")
    stack.deliver_done(target, done)
    status = stack.status(target)
    assert status["messages"] == done and status["unseen"] == 0, status
    return target


def scaling(stack: Stack, kind: str, target: Target, done: int, n: int) -> dict[str, Any]:
    """Scenario 4: drain ``n`` new messages into ``target``; removes them again afterwards."""
    first = stack.status(target)["uidnext"]
    stack.dovecot.deliver_files(target.user, messages.messages(n, start=first))
    status = stack.status(target)
    assert status["unseen"] == n, status
    try:
        result = drain(stack, kind, target, n)
    finally:
        stack.expunge_from(target, first)
    result["done"] = done
    result["queued_us_per_msg"] = result["queued_s"] / n * 1e6
    result["marked_us_per_msg"] = result["marked_s"] / n * 1e6
    return result


# ---- 2: IDLE latency ---------------------------------------------------------------------------------


class _Arrivals:
    """Times at which the list's length grew, from Redis keyspace notifications on that one key."""

    def __init__(self, stack: Stack, key: str) -> None:
        self.times: list[float] = []
        self._redis = stack.redis
        self._redis.config_set("notify-keyspace-events", "Kl")
        self._key = key
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(f"__keyspace@0__:{key}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is None or message["data"] not in (b"rpush", b"lpush"):
                continue
            at = time.time()
            length = int(self._redis.llen(self._key))
            self.times.extend([at] * (length - len(self.times)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pubsub.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def idle_latency(stack: Stack, kind: str, count: int, interval: float) -> dict[str, Any]:
    """Scenario 2: APPEND one message every ``interval`` s to an idle watcher; latency to Redis each."""
    target = stack.new_user(f"idle{kind[0]}")
    stack.dovecot.deliver_files(target.user, [])
    stack.reset_redis()
    contender = start(kind, target, stack.workdir)
    arrivals = _Arrivals(stack, contender.key)
    appended: list[float] = []
    try:
        contender.connected_at()
        time.sleep(1.0)  # caught up (nothing to do) and in IDLE
        steady = contender.memory()["rss"]
        bodies = messages.messages(count)
        with stack.imap(target) as client:
            begin = time.monotonic()
            for i, raw in enumerate(bodies):
                pause = begin + i * interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                client.append("INBOX", raw)
                appended.append(time.time())
        deadline = time.monotonic() + 20.0  # a missed wake-up waits for the IDLE renewal (15 s)
        while len(arrivals.times) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        memory = contender.memory()
    finally:
        arrivals.close()
        contender.stop()
    latencies = [(arrived - sent) * 1000 for sent, arrived in zip(appended, arrivals.times, strict=False)]
    lost = count - len(latencies)
    return {
        "n": count,
        "jobs": len(arrivals.times),
        "p50_ms": _percentile(latencies, 50),
        "p90_ms": _percentile(latencies, 90),
        "p99_ms": _percentile(latencies, 99),
        "max_ms": max(latencies),
        "missed_wakeups": sum(1 for ms in latencies if ms > MISSED_WAKEUP * 1000) + lost,
        "steady_rss": steady,
        "end_rss": memory["rss"],
        "peak_rss": memory["peak_rss"],
    }


# ---- 3: one big message ------------------------------------------------------------------------------


def big_message(stack: Stack, kind: str, size: int) -> dict[str, Any]:
    """Scenario 3b: one ``size``-byte message to an idle watcher; its peak RSS above the idle RSS."""
    target = stack.new_user(f"big{kind[0]}")
    stack.dovecot.deliver_files(target.user, [])
    stack.reset_redis()
    client_redis = stack.redis
    contender = start(kind, target, stack.workdir, max_message_size=BIG_MAX_SIZE)
    raw = messages.big_message(size)
    try:
        contender.connected_at()
        time.sleep(1.0)
        steady = contender.memory()["rss"]
        with stack.imap(target) as client:
            client.append("INBOX", raw)
            _wait(lambda: client_redis.llen(contender.key) >= 1, 120, "the big message queued", contender)
            _wait(lambda: _unseen(client) == 0, 60, "the big message marked", contender)
        memory = contender.memory()
        jobs = int(client_redis.llen(contender.key))
    finally:
        contender.stop()
    return {
        "size": len(raw),
        "jobs": jobs,
        "steady_rss": steady,
        "peak_rss": memory["peak_rss"],
        "above_steady": memory["peak_rss"] - steady,
        "above_steady_x_size": (memory["peak_rss"] - steady) / len(raw),
    }


# ---- 5: worker throughput ----------------------------------------------------------------------------

NOOP_QUEUE = "bench_noop"


def _job_span(connection: redis.Redis, job_ids: list[str]) -> tuple[int, float]:
    """(finished jobs, seconds from the first job's start to the last one's end)."""
    pipe = connection.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(f"rq:job:{job_id}", ["started_at", "ended_at", "status"])
    starts, ends, finished = [], [], 0
    for started, ended, status in pipe.execute():
        if status == b"finished" and started and ended:
            finished += 1
            starts.append(datetime.fromisoformat(started.decode()).timestamp())
            ends.append(datetime.fromisoformat(ended.decode()).timestamp())
    return finished, (max(ends) - min(starts)) if starts else 0.0


def _enqueue_mailroom(stack: Stack, n: int, **mailbox: Any) -> tuple[Path, list[str]]:
    from mailroom.config import load_settings
    from mailroom.keys import AddressTemplate
    from mailroom.queue import MailQueue
    from mailroom.schema import JobPayload
    from mailroom.source import SourceMessage

    target = stack.target(next(iter(stack.dovecot.users)))
    config = mailroom_config(target, stack.workdir / "worker.yml", **mailbox)
    settings = load_settings(config)
    box = settings.mailboxes[0]
    template = AddressTemplate.parse(box.address)
    queue = MailQueue(stack.redis, settings)
    job_ids = []
    for start_uid in range(0, n, 200):
        batch = [
            JobPayload.from_message(
                box.name, SourceMessage(box.kind, uid + 1, raw, len(raw), None, epoch=1), template
            )
            for uid, raw in enumerate(messages.messages(min(200, n - start_uid), start_uid), start_uid)
        ]
        job_ids += [r.job_id for r in queue.enqueue_batch(box, batch)]
    return config, job_ids


def floor(stack: Stack, n: int) -> dict[str, Any]:
    """The bare consumer: LPOP an id, HGET its data, JSON and Base64 decode; nothing else."""
    import base64
    import json

    stack.reset_redis()
    _enqueue_mailroom(stack, n)
    connection = stack.redis
    key = "rq:queue:incoming_email"
    started = time.perf_counter()
    done = 0
    while (job_id := connection.lpop(key)) is not None:
        data = connection.hget(b"rq:job:" + job_id, "data")
        args = json.loads(data)
        base64.b64decode(args[2][0]["raw"] if isinstance(args, list) else args["args"][0]["raw"])
        done += 1
    seconds = time.perf_counter() - started
    return {"n": n, "jobs": done, "seconds": seconds, "jobs_per_s": done / seconds}


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def workers(
    stack: Stack, kind: str, processes: int, n: int, handler: str = "log", delay: float | None = None
) -> dict[str, Any]:
    """Scenario 5: ``n`` jobs through ``processes`` burst workers: mailroom's (``handler``: log, or
    webhook to a local receiver answering after ``delay`` s), or RQ's stock Worker / SimpleWorker on
    a no-op job (kind ``rq_noop`` / ``rq_simple``). CPU per job: the workers' user + system time from
    the first job taken (polled every 50 ms) to their exit, and the receiver's after it listens."""
    stack.reset_redis()
    connection = stack.redis
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    receiver = None
    if kind == "mailroom":
        mailbox: dict[str, Any] = {"handler": handler}
        if handler == "webhook":
            port = _free_port()
            receiver = subprocess.Popen(
                [sys.executable, "-m", "bench.receiver", "--port", str(port), "--delay", str(delay or 0)],
                stdout=subprocess.PIPE, cwd=REPO, env=env,
            )  # fmt: skip
            assert receiver.stdout is not None
            receiver.stdout.readline()
            receiver_started = _process_cpu(receiver.pid)  # its start-up, not counted per request
            secret = stack.workdir / "webhook-secret"
            secret.write_text("c2VjcmV0LWtleS1mb3ItdGhlLWJlbmNo\n")
            mailbox["webhook"] = {"url": f"http://127.0.0.1:{port}/incoming", "secret_file": str(secret)}
        config, job_ids = _enqueue_mailroom(stack, n, **mailbox)
        argv = [*mailroom_argv(), "--config", str(config), "worker", "--burst"]
        queue_key = "rq:queue:incoming_email"
    else:
        rq_queue = Queue(NOOP_QUEUE, connection=connection, serializer=JSONSerializer)
        jobs = rq_queue.enqueue_many([Queue.prepare_data("bench.noop.noop") for _ in range(n)])
        job_ids = [job.id for job in jobs]
        argv = [
            sys.executable,
            "-m",
            "rq.cli",
            "worker",
            "--burst",
            "--with-scheduler",
            "--serializer",
            "json",
        ]
        if kind == "rq_simple":
            argv += ["-w", "rq.worker.SimpleWorker"]
        argv += ["--url", stack.redis_server.url, "--path", str(REPO), NOOP_QUEUE]
        queue_key = f"rq:queue:{NOOP_QUEUE}"
    children_cpu = _children_cpu()  # before the workers start: their CPU is in it once they are waited
    started_cpu: float | None = None  # the workers' CPU when the first job was taken: their start-up
    logs = [stack.workdir / f"worker-{kind}-{i}.log" for i in range(processes)]
    procs = []
    for log in logs:
        with log.open("wb") as out:
            procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env))
    peak = dict.fromkeys(range(processes), 0)
    deadline = time.monotonic() + max(120.0, n / 5)
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            for i, proc in enumerate(procs):
                peak[i] = max(peak[i], _peak_rss(proc.pid))
            if started_cpu is None and connection.llen(queue_key) < n:
                started_cpu = sum(_process_cpu(proc.pid) for proc in procs)
            time.sleep(0.05)
        for proc in procs:
            proc.wait(timeout=10)
        worker_cpu = _children_cpu() - children_cpu
    finally:
        if receiver is not None:
            receiver.terminate()
            said = receiver.communicate(timeout=10)[0].decode()  # "connections=N requests=M"
    receiver_cpu = _children_cpu() - children_cpu - worker_cpu
    cpu = {"cpu_us_per_job": (worker_cpu - (started_cpu or 0.0)) / n * 1e6}
    if receiver is not None:
        cpu["receiver_cpu_us_per_job"] = (receiver_cpu - receiver_started) / n * 1e6
        # TCP connections the workers opened: about one per thread when the pool reuses them.
        counts = dict(part.split("=") for part in said.split() if "=" in part)
        cpu["receiver_connections"] = int(counts.get("connections", -1))
    finished, span = _job_span(connection, job_ids)
    if finished != n:
        tail = logs[0].read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{kind} workers finished {finished} of {n} jobs:\n{tail}")
    return {
        "n": n, "processes": processes, "jobs": finished, "seconds": span, "jobs_per_s": n / span,
        "peak_rss": max(peak.values()), **cpu,
    }  # fmt: skip


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    """User + system CPU seconds of the waited-for child processes (the workers, the receiver)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def end_to_end(stack: Stack, n: int, workers: int = 2) -> dict[str, Any]:
    """``n`` messages waiting in a fresh mailbox; ``mailroom watch`` and ``workers`` worker processes
    (log handler) started together; timed from the watcher's login until every job has finished."""
    target = stack.new_user("e2e")
    stack.dovecot.deliver_files(target.user, messages.messages(n))
    status = stack.status(target)
    assert status["unseen"] == n, status
    stack.reset_redis()
    connection = stack.redis
    config = mailroom_config(target, stack.workdir / f"mailroom-{target.user}.yml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    for i in range(workers):
        with (stack.workdir / f"e2e-worker-{i}.log").open("wb") as out:
            argv = [*mailroom_argv(), "--config", str(config), "worker"]
            procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env))
    watcher = start("mailroom", target, stack.workdir)
    finished_key = "rq:finished:incoming_email"
    try:
        connected = watcher.connected_at()
        done = _wait(lambda: connection.zcard(finished_key) >= n, max(120.0, n / 20), "all handled", watcher)
    finally:
        watcher.stop()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"n": n, "jobs": int(connection.zcard(finished_key)), "seconds": done - connected,
            "handled_per_s": n / (done - connected)}  # fmt: skip
