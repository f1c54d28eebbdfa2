"""The whole pipeline on one machine, no Docker: ``python3 -m devstack.demo [--once]`` (``make demo``).

Starts a private redis-server and Dovecot on free loopback ports (installing the Debian packages when they
are missing), writes a mailroom config for them, runs ``mailroom watch`` and ``mailroom worker`` as child
processes with their output prefixed on this terminal, APPENDs a sample reply to
``incoming+demo-key-123@example.com`` and waits until the worker has handled it.

Without ``--once`` everything keeps running until Ctrl-C (or SIGTERM); with it, everything is stopped and
the exit code says whether the message was handled in time (0) or not (1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from email.utils import formatdate, make_msgid
from pathlib import Path
from types import FrameType
from typing import IO

import redis
import yaml
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer

from devstack.dovecot import Dovecot
from devstack.mailbox import append_messages, count
from devstack.redis_server import RedisServer

DEMO_KEY = "demo-key-123"
ADDRESS_TEMPLATE = "incoming+%{key}@example.com"
QUEUE = "incoming_email"
USER, PASSWORD = "incoming", "secret"
STOP_GRACE = 10.0
PACKAGES = {"dovecot": "dovecot-imapd", "redis-server": "redis-server"}


def say(message: str) -> None:
    print(f"[demo]   {message}", flush=True)


# ---- set-up ----------------------------------------------------------------------------------------


def _have(binary: str) -> bool:
    return shutil.which(binary) is not None or any(
        Path(d, binary).is_file() for d in ("/usr/sbin", "/usr/bin")
    )


def ensure_packages() -> None:
    """apt-get install dovecot-imapd / redis-server when their binaries are missing (root or sudo)."""
    missing = [package for binary, package in PACKAGES.items() if not _have(binary)]
    if not missing:
        return
    if not shutil.which("apt-get"):
        sys.exit(f"[demo]   missing {', '.join(missing)} and no apt-get here: please install them")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    say(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", *missing], check=True, env=env)
    # The package may start a system-wide dovecot on 143/993. Ours uses free ports, so it does not clash;
    # it is left alone.


def write_config(path: Path, redis_url: str, imap_port: int) -> None:
    config = {
        "redis_url": redis_url,
        "log_level": "info",
        "mailboxes": [
            {
                "name": "demo",
                "host": "127.0.0.1",
                "port": imap_port,
                "security": "none",  # plain IMAP is accepted silently on loopback
                "username": USER,
                "password": PASSWORD,
                "address": ADDRESS_TEMPLATE,
                "queue": QUEUE,
                "handler": "log",
                "idle_timeout": 60,
                "retries": [1, 2],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def sample_reply() -> bytes:
    lines = [
        "From: Alice Example <alice@example.org>",
        f"To: App Notifications <{ADDRESS_TEMPLATE.replace('%{key}', DEMO_KEY)}>",
        "Subject: Re: Build #42 failed",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: {make_msgid(domain='mail.example.org')}",
        f"In-Reply-To: <reply-{DEMO_KEY}@app.example.com>",
        f"References: <reply-{DEMO_KEY}@app.example.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "Thanks, I will look at it tomorrow.",
        "",
        "On Tue, 14 May 2024 at 10:00, App wrote:",
        "> Build #42 failed.",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


# ---- child processes ---------------------------------------------------------------------------------


def mailroom_command() -> list[str]:
    """The ``mailroom`` console script of this Python (the one ``pip install -e .`` made)."""
    script = Path(sys.executable).parent / "mailroom"
    if script.is_file():
        return [str(script)]
    # Same entry point, without relying on where pip put scripts.
    loader = (
        "from importlib.metadata import entry_points;"
        " entry_points(group='console_scripts')['mailroom'].load()()"
    )
    return [sys.executable, "-c", loader]


class Child:
    """A ``mailroom`` subprocess whose output is echoed with a prefix; remembers whether a line matched."""

    def __init__(self, name: str, args: list[str], watch_for: str) -> None:
        self.name = name
        self.watch_for = watch_for
        self.seen = threading.Event()
        # Our own session: Ctrl-C reaches the demo only, which then stops the children in order.
        self.proc = subprocess.Popen(
            [*mailroom_command(), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[bytes]) -> None:
        prefix = f"[{self.name}]".ljust(9)
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            print(f"{prefix}{line}", flush=True)
            if self.watch_for in line:
                self.seen.set()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop within {STOP_GRACE:.0f}s; killing it")
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=2)
        return self.proc.returncode


@contextmanager
def child(name: str, args: list[str], watch_for: str = "\0") -> Iterator[Child]:
    proc = Child(name, args, watch_for)
    try:
        yield proc
    finally:
        code = proc.stop()
        say(f"{name} stopped (exit {code})")


@contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mailroom-demo-"))
    try:
        yield path
    finally:
        if keep:
            say(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# ---- the demo ----------------------------------------------------------------------------------------


def wait_handled(
    connection: redis.Redis, worker: Child, deadline: float, stop: threading.Event
) -> Job | None:
    """The finished job whose payload carries DEMO_KEY, or None at the deadline."""
    queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
    finished = FinishedJobRegistry(queue=queue)
    failed = FailedJobRegistry(queue=queue)
    reported_failures: set[str] = set()
    while time.monotonic() < deadline:
        for job_id in finished.get_job_ids():
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            if job.args and job.args[0].get("key") == DEMO_KEY:
                return job
        for job_id in set(failed.get_job_ids()) - reported_failures:
            reported_failures.add(job_id)
            say(f"job {job_id} is in the failed registry (see the worker output)")
        if not worker.alive:
            say("the worker exited early")
            return None
        if stop.wait(0.2):
            say("interrupted")
            return None
    return None


def run(once: bool, timeout: float, keep: bool) -> int:
    ensure_packages()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    with ExitStack() as stack:
        root = stack.enter_context(workdir(keep))
        redis_server = stack.enter_context(RedisServer(root / "redis"))
        say(f"redis-server on {redis_server.url} (pid {redis_server.pid})")
        dovecot = stack.enter_context(Dovecot(root / "dovecot", users={USER: PASSWORD}))
        say(f"dovecot IMAP on 127.0.0.1:{dovecot.port} user={USER} password={PASSWORD} (pid {dovecot.pid})")
        config = root / "mailroom.yml"
        write_config(config, redis_server.url, dovecot.port)
        say(f"config {config}")

        log_format = "console" if sys.stdout.isatty() else "json"
        common = ["--config", str(config), "--log-format", log_format]
        watcher = stack.enter_context(child("watch", [*common, "watch"]))
        worker = stack.enter_context(child("worker", [*common, "worker"], watch_for="email_handled"))

        to = ADDRESS_TEMPLATE.replace("%{key}", DEMO_KEY)
        started = time.monotonic()
        append_messages(dovecot.host, dovecot.port, USER, PASSWORD, [sample_reply()])
        say(f"appended a sample reply to {to}")

        connection = redis_server.client()
        stack.callback(connection.close)
        job = wait_handled(connection, worker, started + timeout, stop)
        if job is None or not worker.seen.wait(timeout=max(0.0, started + timeout - time.monotonic())):
            say(f"FAILED: the message was not handled within {timeout:.0f}s")
            return 1
        payload = job.args[0]
        say(
            f"delivered: key={payload['key']} handler=log job={job.id}"
            f" (mailbox={payload['mailbox']} uid={payload['uid']} key_header={payload['key_header']},"
            f" {time.monotonic() - started:.2f}s after APPEND)"
        )
        unseen = count(dovecot.host, dovecot.port, USER, PASSWORD, ("UNSEEN",))
        say(f"IMAP: {unseen} unseen message(s) left in INBOX (\\Seen is set once Redis has the job)")
        if once:
            return 0

        say("running; append more mail with:")
        say(
            f"  python3 -c 'from devstack import append_messages, make_message; append_messages("
            f'"127.0.0.1", {dovecot.port}, "{USER}", "{PASSWORD}", [make_message(1, to="{to}")])\''
        )
        say("Ctrl-C stops everything")
        while not stop.wait(0.5):
            for proc in (watcher, worker):
                if not proc.alive:
                    say(f"{proc.name} exited unexpectedly (exit {proc.proc.returncode})")
                    return 1
        say("stopping")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m devstack.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="stop everything once the sample is handled")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the sample (30)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (config, logs, mail)")
    args = parser.parse_args(argv)
    return run(once=args.once, timeout=args.timeout, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
