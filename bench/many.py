"""Many mailboxes in one watcher: what M quiet mailboxes cost, and whether mail still arrives promptly.

One ``mailroom watch`` process watches M mailboxes (one Dovecot user each, as M separate accounts
would be). After every mailbox has connected and settled, two phases are measured on the process's own
counters (/proc/PID/stat, status, fd):

- **idle**: nothing arrives for ``idle_seconds``; the CPU time the watcher spends, per minute and per
  mailbox-minute (mail_room measured 0.9-1.2 ms per mailbox-minute in the same setup, issue 12);
- **load**: one APPEND every ``interval`` s to a random mailbox for ``load_seconds``; every message must
  be queued, with its latency (APPEND returned -> the watcher logged ``message_enqueued``), and the CPU
  time per minute again.

``python -m bench.many [--mailboxes 500] [--idle-seconds 60] [--load-seconds 60]`` runs it on its own
private servers; bench/run.py runs it as the ``many`` scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from imapclient import IMAPClient

from bench import messages
from bench.drain import MAILROOM_QUEUE, Contender, Target, mailroom_argv
from bench.scenarios import Stack, _percentile
from devstack import Dovecot, RedisServer

SETTLE_SECONDS = 5.0  # after the last mailbox connected: catch-ups done, every watcher in IDLE
TICKS = os.sysconf("SC_CLK_TCK")
KEY_PREFIX = "many"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def process_facts(pid: int) -> dict[str, int]:
    """Threads, resident memory (bytes) and open file descriptors of the process."""
    facts: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == "Threads":
            facts["threads"] = int(rest)
        elif name == "VmRSS":
            facts["rss"] = int(rest.split()[0]) * 1024
    facts["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return facts


def many_config(targets: list[Target], path: Path, **mailbox: Any) -> Path:
    config = {
        "redis_url": targets[0].redis_url,
        "log_format": "json",
        "mailboxes": [
            {
                "name": t.user,
                "host": t.host,
                "port": t.port,
                "security": "none",
                "username": t.user,
                "password": t.password,
                "address": "incoming+%{key}@example.com",
                "queue": MAILROOM_QUEUE,
                "handler": "log",
                "retries": [],
                **mailbox,
            }
            for t in targets
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _count_events(log: Path, event: str) -> int:
    needle = f'"{event}"'
    with log.open(errors="replace") as lines:
        return sum(1 for line in lines if needle in line)


def _enqueued_at(log: Path) -> dict[str, float]:
    """reply key -> wall-clock time the watcher logged message_enqueued for it."""
    found: dict[str, float] = {}
    with log.open(errors="replace") as lines:
        for line in lines:
            if '"message_enqueued"' not in line:
                continue
            event = json.loads(line)
            key = event.get("reply_key") or ""
            if key.startswith(KEY_PREFIX):
                at = event.get("at")
                found[key] = (
                    float(at) if at is not None else datetime.fromisoformat(event["timestamp"]).timestamp()
                )
    return found


class Appender:
    """One APPEND every ``interval`` s to a random mailbox, on connections opened as needed and kept; each
    message's reply key is ``key_prefix`` and its number."""

    def __init__(
        self,
        targets: list[Target],
        interval: float,
        seconds: float,
        key_prefix: str = KEY_PREFIX,
        seed: int = 12,
    ) -> None:
        self.targets = targets
        self.key_prefix = key_prefix
        self.interval = interval
        self.count = int(seconds / interval)
        self.sent: dict[str, float] = {}  # reply key -> wall-clock time APPEND returned
        self._clients: dict[str, IMAPClient] = {}
        self._rng = random.Random(seed)  # which mailbox: not a secret
        self.thread = threading.Thread(target=self._run, name="appender", daemon=True)

    def _client(self, target: Target) -> IMAPClient:
        client = self._clients.get(target.user)
        if client is None:
            client = IMAPClient(target.host, port=target.port, ssl=False, timeout=30)
            client.login(target.user, target.password)
            self._clients[target.user] = client
        return client

    def _run(self) -> None:
        begin = time.monotonic()
        for i in range(self.count):
            pause = begin + i * self.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            target = self._rng.choice(self.targets)
            key = f"{self.key_prefix}{i}"
            raw = messages.message(i, key)
            self._client(target).append("INBOX", raw)
            self.sent[key] = time.time()

    def close(self) -> None:
        for client in self._clients.values():
            try:
                client.logout()
            except Exception:  # a bench helper: the server may be gone already
                pass


def many(
    stack: Stack,
    mailboxes: int,
    idle_seconds: float,
    load_seconds: float,
    interval: float = 0.1,
    **mailbox: Any,
) -> dict[str, Any]:
    """One watcher over ``mailboxes`` fresh mailboxes: idle CPU, then CPU and latency under light load."""
    stack.reset_redis()
    targets = [stack.new_user(KEY_PREFIX) for _ in range(mailboxes)]
    for target in targets:
        stack.dovecot.deliver_files(target.user, [])  # the Maildir exists, empty
    config = many_config(targets, stack.workdir / f"many-{mailboxes}.yml", **mailbox)
    log = stack.workdir / f"many-{mailboxes}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    watcher = Contender("mailroom", [*mailroom_argv(), "--config", str(config), "watch"], log, "", env)
    try:
        started = time.monotonic()
        while _count_events(log, "imap_connected") < mailboxes:
            if watcher.proc.poll() is not None or time.monotonic() - started > 60 + mailboxes / 5:
                raise RuntimeError(f"not every mailbox connected:\n{watcher.log_tail()}")
            time.sleep(0.2)
        connect_seconds = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)
        pid = watcher.proc.pid
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(idle_seconds)
        idle_cpu, idle_wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
        idle_facts = process_facts(pid)

        appender = Appender(targets, interval, load_seconds)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        appender.thread.start()
        appender.thread.join()
        load_cpu, load_wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and len(_enqueued_at(log)) < appender.count:
            time.sleep(0.2)
        arrived = _enqueued_at(log)
        appender.close()
        reconnects = _count_events(log, "imap_connected") - mailboxes
    finally:
        watcher.stop()
    latencies = [(arrived[k] - sent) * 1000 for k, sent in appender.sent.items() if k in arrived]
    per_minute = idle_cpu * 60 / idle_wall
    return {
        "mailboxes": mailboxes,
        "connect_seconds": round(connect_seconds, 1),
        "idle_cpu_s_per_min": per_minute,
        "idle_ms_per_mailbox_min": per_minute * 1000 / mailboxes,
        "load_cpu_s_per_min": load_cpu * 60 / load_wall,
        "appended": appender.count,
        "queued": len(latencies),
        "lost": appender.count - len(latencies),
        "p50_ms": _percentile(latencies, 50) if latencies else 0.0,
        "p99_ms": _percentile(latencies, 99) if latencies else 0.0,
        "max_ms": max(latencies) if latencies else 0.0,
        "reconnects": reconnects,
        "threads": idle_facts["threads"],
        "fds": idle_facts["fds"],
        "rss": idle_facts["rss"],
    }


def describe(result: dict[str, Any]) -> str:
    return (
        f"{result['mailboxes']} mailboxes: idle {result['idle_cpu_s_per_min']:.2f} CPU-s/min"
        f" ({result['idle_ms_per_mailbox_min']:.2f} ms per mailbox-minute);"
        f" under load {result['load_cpu_s_per_min']:.2f} CPU-s/min;"
        f" {result['queued']}/{result['appended']} queued, p50 {result['p50_ms']:.0f} ms,"
        f" p99 {result['p99_ms']:.0f} ms, max {result['max_ms']:.0f} ms;"
        f" {result['threads']} threads, {result['fds']} fds, RSS {result['rss'] / 1e6:.1f} MB;"
        f" connected in {result['connect_seconds']} s, {result['reconnects']} reconnects"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.many", description=__doc__.split("\n")[0])
    parser.add_argument("--mailboxes", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between APPENDs under load")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=YAML",
        help="mailbox setting, e.g. keepalive_interval=0",
    )
    args = parser.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    with tempfile.TemporaryDirectory(prefix="mailroom-many-") as tmp:
        root = Path(tmp)
        with RedisServer(root / "redis") as redis_server, Dovecot(root / "dovecot", users={}) as dovecot:
            stack = Stack(dovecot, redis_server, root)
            result = many(
                stack, args.mailboxes, args.idle_seconds, args.load_seconds, args.interval, **overrides
            )
    print(describe(result))
    print(json.dumps(result))
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
