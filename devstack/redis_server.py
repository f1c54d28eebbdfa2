"""A private, throw-away ``redis-server`` on a loopback port (no persistence)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from devstack.ports import DevstackError, free_port, log_tail, wait_port_closed

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def redis_server_binary() -> str:
    return shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """``redis-server`` as a child process bound to 127.0.0.1.

    The port is fixed at construction (or picked free) so ``restart()`` comes back on the same URL,
    which is what reconnect tests need.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        persistent: bool = False,
        replica_of: RedisServer | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        # persistent: an append-only file fsynced on every write, so a SIGKILL loses no acknowledged
        # write (the production setup the reliability promises assume); data survives restart().
        self.persistent = persistent
        self.replica_of = replica_of  # a replica (--replicaof) of that server
        self.args = tuple(args)  # more redis-server options, e.g. ("--maxmemory-policy", "allkeys-lru")
        self._port_given = port is not None
        self.port = port if port is not None else free_port()
        self.log_path = self.workdir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> Self:
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A free port can be taken between free_port() and bind(); only retry when we chose it.
        attempts = 1 if self._port_given else 3
        for attempt in range(attempts):
            try:
                self._start_once()
                return self
            except DevstackError:
                if attempt + 1 == attempts:
                    raise
                self.port = free_port()
        return self

    def _start_once(self) -> None:
        self.log_path.write_text("")
        aof = ["--appendonly", "no"]
        if self.persistent:
            aof = ["--appendonly", "yes", "--appendfsync", "always"]
        cmd = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            *aof,
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self.args,
        ]  # fmt: skip
        if self.replica_of is not None:
            cmd += ["--replicaof", self.replica_of.host, str(self.replica_of.port)]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session, as Dovecot's: a Ctrl-C meant for the demo must not stop Redis before
            # the worker and watcher using it have shut down; whoever started it stops it.
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        self._terminate(signal.SIGKILL)
        raise DevstackError(
            f"redis-server did not answer PING on port {self.port} within {START_TIMEOUT}s;"
            f" log tail ({self.log_path}):\n{log_tail(self.log_path)}"
        )

    def _terminate(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        wait_port_closed(self.port, timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM); a no-op when not running."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """Abrupt death (SIGKILL), for chaos tests."""
        self._terminate(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections but answers nothing (a hung or partitioned node)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port; data is lost unless ``persistent``."""
        self.stop()
        self._start_once()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, running={self.running})"
