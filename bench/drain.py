"""The two contenders, side by side in one file: mailroom's watcher and the raw lower bound.

Both run as their own process (so their memory is theirs alone, read from /proc/PID/status) against the
same Dovecot and Redis:

- **mailroom**: ``mailroom --config X watch``, the real command with a generated config; its JSON log goes
  to a file, from which the benchmark reads when the watcher had connected (``imap_connected``).
- **raw**: :func:`raw_loop` below, the least any IMAP-to-Redis poller can do: UID SEARCH UNSEEN, FETCH
  ``BODY.PEEK[]`` in batches, RPUSH the bytes (pipelined, one round trip per batch), STORE \\Seen on the
  batch, then IDLE until the server says anything. No parsing, no guard, no RQ, no logging, and the naive
  IDLE loop that can miss a wake-up (an EXISTS answered to the SEARCH or STORE is dropped).

``python -m bench.drain --host H --port P --user U --redis-url R`` runs the raw loop (password in
``$BENCH_IMAP_PASSWORD``) until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import yaml
from imapclient import IMAPClient

RAW_KEY = "bench:raw"
MAILROOM_QUEUE = "incoming_email"
MAILROOM_KEY = f"rq:queue:{MAILROOM_QUEUE}"
BATCH_SIZE = 200  # both contenders: mailroom's default batch_size
IDLE_RENEW = 15.0  # both contenders: mailroom's default keepalive_interval
PASSWORD_ENV = "BENCH_IMAP_PASSWORD"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    password: str
    redis_url: str


# ---- the raw lower bound ---------------------------------------------------------------------------


def raw_loop(target: Target, key: str = RAW_KEY, batch: int = BATCH_SIZE, renew: float = IDLE_RENEW) -> None:
    client = IMAPClient(target.host, port=target.port, ssl=False, timeout=30)
    client.login(target.user, target.password)
    client.select_folder("INBOX")
    connection = redis.Redis.from_url(target.redis_url)
    print(json.dumps({"event": "imap_connected", "at": time.time()}), flush=True)
    while True:
        uids = client.search(["UNSEEN"])
        for start in range(0, len(uids), batch):
            chunk = uids[start : start + batch]
            fetched = client.fetch(chunk, ["BODY.PEEK[]"])
            pipe = connection.pipeline(transaction=False)
            for uid in chunk:
                pipe.rpush(key, fetched[uid][b"BODY[]"])
            pipe.execute()
            client.add_flags(chunk, [b"\\Seen"], silent=True)
        client.idle()
        client.idle_check(timeout=renew)
        client.idle_done()


# ---- running either contender as a process ----------------------------------------------------------


class Contender:
    """One watcher process; ``kind`` is ``mailroom`` or ``raw``; ``key`` the Redis list its jobs land in."""

    def __init__(self, kind: str, argv: list[str], log_path: Path, key: str, env: dict[str, str]) -> None:
        self.kind = kind
        self.key = key
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )

    def connected_at(self, timeout: float = 30.0) -> float:
        """Wall-clock time at which the watcher had logged in and selected the folder."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"imap_connected"' not in line:
                    continue
                event = json.loads(line)
                if "at" in event:
                    return float(event["at"])
                return datetime.fromisoformat(event["timestamp"]).timestamp()
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"{self.kind} watcher did not connect; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def memory(self) -> dict[str, int]:
        """Current (VmRSS) and peak (VmHWM) resident memory in bytes."""
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
        return {"rss": values["VmRSS"], "peak_rss": values["VmHWM"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def mailroom_argv() -> list[str]:
    script = Path(sys.executable).parent / "mailroom"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from mailroom.cli import cli; cli()"]


def mailroom_config(target: Target, path: Path, **mailbox: Any) -> Path:
    config = {
        "redis_url": target.redis_url,
        "log_format": "json",
        "mailboxes": [
            {
                "name": "bench",
                "host": target.host,
                "port": target.port,
                "security": "none",
                "username": target.user,
                "password": target.password,
                "address": "incoming+%{key}@example.com",
                "queue": MAILROOM_QUEUE,
                "handler": "log",
                "retries": [],
                **mailbox,
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(kind: str, target: Target, workdir: Path, **mailbox: Any) -> Contender:
    """Start ``mailroom`` or ``raw`` watching ``target``; ``mailbox`` overrides mailroom's mailbox config."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if kind == "mailroom":
        config = mailroom_config(target, workdir / f"mailroom-{target.user}.yml", **mailbox)
        argv = [*mailroom_argv(), "--config", str(config), "watch"]
        return Contender(kind, argv, workdir / f"mailroom-{target.user}.log", MAILROOM_KEY, env)
    if kind == "raw":
        env[PASSWORD_ENV] = target.password
        argv = [sys.executable, "-m", "bench.drain", "--host", target.host, "--port", str(target.port)]
        argv += ["--user", target.user, "--redis-url", target.redis_url]
        return Contender(kind, argv, workdir / f"raw-{target.user}.log", RAW_KEY, env)
    raise ValueError(f"unknown contender {kind!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the raw IMAP-to-Redis lower bound (runs until SIGTERM)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args(argv)
    target = Target(args.host, args.port, args.user, os.environ[PASSWORD_ENV], args.redis_url)
    raw_loop(target)


if __name__ == "__main__":
    main()
