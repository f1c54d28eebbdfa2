"""The chaos suite's tools: watcher/worker subprocesses that can really be SIGKILLed, a TCP proxy that can
freeze a connection silently, mail feeders, and the one end check every scenario ends with.

The end check reads only what the system itself holds: the handler's own record (``test:handled``), RQ's
queue and failed registry in Redis, and the flags on the IMAP server. Its verdict for every Message-ID we
sent: handled or failed exactly once (never missing, never twice), and nothing left unmarked.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import redis
import structlog
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from devstack import ImapAccount, append_messages, count, make_message
from tests.support import handled, queue, run_worker

ROOT = Path(__file__).resolve().parents[2]
_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


def imap(account: ImapAccount) -> tuple[str, int, str, str]:
    return (account.host, account.port, account.username, account.password)


# -- mail ----------------------------------------------------------------------------------------------


def batch(prefix: str, n: int, start: int = 0) -> list[bytes]:
    """``n`` small messages, each with a unique Message-ID and the reply key ``{prefix}{i}``."""
    return [make_message(i, to=f"incoming+{prefix}{i}@example.com") for i in range(start, start + n)]


def message_ids(messages: Iterable[bytes]) -> set[str]:
    ids = set()
    for raw in messages:
        found = _MESSAGE_ID.search(raw)
        assert found, "every chaos message has a Message-ID"
        ids.add(found.group(1).decode())
    return ids


class Feeder(threading.Thread):
    """Appends ``chunks`` of messages over IMAP, one chunk every ``interval`` seconds, in the background.

    An APPEND that fails (the server is being restarted) is retried until it succeeds, so every message
    in ``sent`` is on the server exactly once.
    """

    def __init__(self, account: ImapAccount, chunks: Sequence[list[bytes]], interval: float) -> None:
        super().__init__(daemon=True)
        self.account = account
        self.chunks = chunks
        self.interval = interval
        self.sent: list[bytes] = []
        self.errors = 0

    def run(self) -> None:
        for chunk in self.chunks:
            while True:
                try:
                    append_messages(*imap(self.account), chunk, folder=self.account.folder)
                    break
                except Exception:  # the server may be down or restarting: try again
                    self.errors += 1
                    time.sleep(0.2)
            self.sent.extend(chunk)
            time.sleep(self.interval)


# -- processes -----------------------------------------------------------------------------------------


# ``python -m mailroom``, plus a SIGUSR1 handler that writes every thread's stack to the log: when a
# scenario waits in vain, the failure shows where the process was stuck.
_ENTRY = (
    "import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True);"
    " sys.argv[0] = 'mailroom'; from mailroom.cli import main; main()"
)


class MailroomProcess:
    """``python -m mailroom --config C <command>`` as a child in its own process group, its output in
    ``log`` (appended across restarts), so SIGKILL is a real kill of the whole thing."""

    started: ClassVar[list[MailroomProcess]] = []  # every one ever started, for reap()

    def __init__(self, config: Path, log: Path, *command: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.command = command or ("watch",)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> MailroomProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(self.env or {})}
        env.pop("MAILROOM_CONFIG", None)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _ENTRY, "--config", str(self.config), "--log-format", "json",
                 *self.command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        MailroomProcess.started.append(self)
        return self

    @classmethod
    def reap(cls) -> None:
        """Kill whatever a test left running (it failed before stopping its processes)."""
        while cls.started:
            cls.started.pop().kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process group: no handler runs, no socket is closed politely."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def terminate(self, timeout: float = 15.0) -> tuple[int | None, float]:
        """SIGTERM and wait: (exit code, seconds it took); exit code None if it had to be killed."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - started
        self.kill()
        return code, took

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.log)

    def dump_stacks(self) -> None:
        """Have the process write every thread's Python stack to its log (see ``_ENTRY``)."""
        if self.alive:
            os.kill(self.pid, signal.SIGUSR1)
            time.sleep(0.5)


def read_events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def event_counts(*logs: Path) -> Counter[str]:
    return Counter(e.get("event", "?") for log in logs if log.exists() for e in read_events(log))


def wait_for_event(
    log: Path, name: str, after: int = 0, timeout: float = 30.0, process: MailroomProcess | None = None
) -> int:
    """Wait until ``log`` holds more than ``after`` events called ``name``; return how many it holds.

    In vain: AssertionError with the log's tail, after ``process`` (if given) wrote its stacks there.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sum(1 for e in read_events(log) if e.get("event") == name) if log.exists() else 0
        if found > after:
            return found
        time.sleep(0.05)
    if process is not None:
        process.dump_stacks()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:]) if log.exists() else ""
    raise AssertionError(f"no new {name!r} in {log} within {timeout} s; log tail:\n{tail}")


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


# -- a TCP proxy that can go silent ---------------------------------------------------------------------


@dataclass
class _Link:
    client: socket.socket
    server: socket.socket
    frozen: bool = False


class FreezableProxy:
    """A loopback TCP proxy. ``freeze()`` stops forwarding on every connection open at that moment, in
    both directions, while keeping the sockets open: the kernel still ACKs and answers keepalives, no FIN
    and no RST is ever sent, exactly like a NAT or firewall that silently dropped the flow. New
    connections made after the freeze are forwarded normally (unless ``blackhole()``).

    ``client_lines`` records every line the client sent, with its time, to count IMAP commands.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._blackhole = False
        self.client_lines: list[tuple[float, bytes]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            link = _Link(client, server, frozen=self._blackhole)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._pump, args=(link, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(link, False), daemon=True).start()

    def _pump(self, link: _Link, upstream: bool) -> None:
        source, sink = (link.client, link.server) if upstream else (link.server, link.client)
        pending = b""
        while not self._closed.is_set():
            if link.frozen:
                time.sleep(0.1)  # neither read nor write: the bytes wait in the kernel, unanswered
                continue
            try:
                readable, _, _ = select.select([source], [], [], 0.1)
                if not readable:
                    continue
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if link.frozen:  # frozen while we were reading: drop what we hold, as a dead path would
                continue
            if upstream:
                pending += data
                *lines, pending = pending.split(b"\r\n")
                now = time.monotonic()
                self.client_lines.extend((now, line) for line in lines)
            try:
                sink.sendall(data)
            except OSError:
                break
        if not link.frozen:
            for sock in (link.client, link.server):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def freeze(self) -> int:
        """Silence every open connection; return how many."""
        with self._lock:
            for link in self._links:
                link.frozen = True
            return len(self._links)

    def blackhole(self) -> None:
        """Freeze every open connection and every new one too (they are accepted, then ignored): a
        server that became unreachable without refusing anything."""
        self._blackhole = True
        self.freeze()

    def reopen(self) -> None:
        """New connections are forwarded again; the frozen ones stay frozen until their client gives up."""
        self._blackhole = False

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for link in self._links:
                link.client.close()
                link.server.close()


def drain(redis_url: str, *queues: str) -> None:
    """Run an in-process burst worker until the queues are empty, without a log line per job."""
    with structlog.testing.capture_logs():
        run_worker(redis_url, *queues)


# -- the end check -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    messages: int
    faults: int
    lost: list[str] = field(default_factory=list)
    doubled: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    unmarked: int = 0
    handled: int = 0
    failed: int = 0
    notes: str = ""

    def line(self) -> str:
        extra = f" handled={self.handled} failed={self.failed}" + (f" {self.notes}" if self.notes else "")
        return (
            f"chaos {self.name}: messages={self.messages} faults={self.faults} lost={len(self.lost)}"
            f" doubled={sum(n - 1 for n in self.doubled.values())} unmarked={self.unmarked}{extra}"
        )

    def assert_perfect(self) -> None:
        assert not self.lost, f"{len(self.lost)} lost, e.g. {self.lost[:3]}"
        assert not self.doubled, f"{len(self.doubled)} doubled, e.g. {list(self.doubled.items())[:3]}"
        assert not self.unexpected, f"handled messages nobody sent: {self.unexpected[:3]}"
        assert self.unmarked == 0, f"{self.unmarked} messages left unmarked on the server"


def failed_message_ids(redis_url: str, queue_name: str = "incoming_email") -> list[str]:
    rq_queue = queue(redis_url, queue_name)
    registry = FailedJobRegistry(queue=rq_queue)
    ids = []
    for job_id in registry.get_job_ids():
        job = Job.fetch(job_id, connection=rq_queue.connection, serializer=JSONSerializer)
        ids.append(job.args[0]["message_id"])
    return ids


def verify(
    name: str,
    sent: Iterable[bytes],
    redis_url: str,
    accounts: Sequence[ImapAccount],
    faults: int,
    queue_name: str = "incoming_email",
    notes: str = "",
) -> Outcome:
    """Count every sent message in the handler's record and the failed registry; print the summary line.

    Call it once the watchers are stopped and the workers have drained the queue.
    """
    expected = message_ids(sent)
    rq_queue = queue(redis_url, queue_name)
    assert len(rq_queue) == 0, f"{len(rq_queue)} jobs still queued: run the workers first"
    started = StartedJobRegistry(queue=rq_queue).get_job_ids()
    assert not started, f"jobs still marked started: {started}"
    done = Counter(record.split("|", 1)[0] for record in handled(redis_url))
    failed = Counter(failed_message_ids(redis_url, queue_name))
    outcome = Outcome(name, len(expected), faults, notes=notes)
    outcome.handled, outcome.failed = sum(done.values()), sum(failed.values())
    for message_id in sorted(expected):
        times = done[message_id] + failed[message_id]
        if times == 0:
            outcome.lost.append(message_id)
        elif times > 1:
            outcome.doubled[message_id] = times
    outcome.unexpected = sorted((set(done) | set(failed)) - expected)
    outcome.unmarked = sum(count(*imap(a), ["UNSEEN"], folder=a.folder) for a in accounts)
    print(f"\n{outcome.line()}")  # on a line of its own, after pytest's progress dots
    return outcome


def guard_count(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(1 for _ in client.scan_iter("mailroom:guard:*", count=1000))
    finally:
        client.close()
