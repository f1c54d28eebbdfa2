"""The webhook handler's HTTP path alone: ``python -m bench.webhook [--threads 10] [--requests 3000]``.

Starts bench/receiver.py (its own process), builds a WebhookHandler as the worker does (JWT in GitLab's
header, the bench's secret file) and calls it from ``--threads`` threads until ``--requests`` messages
(~4 KB each, bench/messages.py) have been posted; no Redis, no RQ. Prints, per receiver delay: requests/s
(wall), CPU per request of this process (``time.process_time``: the handler's Python, its threads
included) and of the receiver (from /proc/PID/stat), and how many TCP connections the receiver accepted
(the pool reuses them: about one per thread).
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import messages
from bench.drain import REPO
from mailroom.config import WebhookConfig
from mailroom.schema import JobPayload
from workers.handlers.webhook import WebhookHandler
from workers.incoming import IncomingEmail
from workers.registry import import_handler

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid``, from /proc (clock ticks: 10 ms granularity)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _emails(count: int) -> list[IncomingEmail]:
    emails = []
    for i, raw in enumerate(messages.messages(count)):
        payload = JobPayload(
            mailbox="bench", source="imap", uidvalidity=1, uid=i + 1, received_at="2026-11-30T00:00:00+00:00",
            size=len(raw), truncated=False, message_id=f"m{i}@bench", key=f"bench{i:06d}", key_header="To",
            from_address="alice@example.org", subject="s", auto_reply=False, bounce=False, parse_error=None,
            raw=raw,
        )  # fmt: skip
        emails.append(IncomingEmail(payload))
    return emails


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(
    delay: float,
    threads: int,
    requests: int,
    secret: Path,
    receiver_module: str = "bench.receiver",
    handler_class: type[Any] = WebhookHandler,
    warmup: int = 200,
) -> dict[str, Any]:
    port = _free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-m", receiver_module, "--port", str(port), "--delay", str(delay)],
        stdout=subprocess.PIPE, cwd=REPO, text=True,
    )  # fmt: skip
    assert receiver.stdout is not None
    receiver.stdout.readline()
    try:
        handler = handler_class(WebhookConfig(url=f"http://127.0.0.1:{port}/incoming", secret_file=secret))
        emails = _emails(64)
        lock = threading.Lock()
        left = [0]

        def work() -> None:
            i = 0
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                handler(emails[i % len(emails)])
                i += 1

        def burst(count: int) -> tuple[float, float, float]:
            left[0] = count
            pool = [threading.Thread(target=work) for _ in range(threads)]
            wall, cpu, rcpu = time.perf_counter(), time.process_time(), _cpu_seconds(receiver.pid)
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            return (
                time.perf_counter() - wall, time.process_time() - cpu, _cpu_seconds(receiver.pid) - rcpu
            )  # fmt: skip

        burst(warmup)
        wall, cpu, rcpu = burst(requests)
        pool = getattr(handler, "transport", None) or getattr(handler, "client", None)  # a variant's
        if pool is not None:
            pool.close()
    finally:
        receiver.terminate()
        out, _ = receiver.communicate(timeout=10)
    stats = dict(part.split("=") for part in out.split() if "=" in part)
    return {
        "delay": delay, "threads": threads, "requests": requests, "per_s": requests / wall,
        "cpu_us": cpu / requests * 1e6, "receiver_cpu_us": rcpu / requests * 1e6,
        "connections": int(stats.get("connections", -1)),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=10, help="callers at once (the worker's concurrency)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--receiver", default="bench.receiver", help="the receiver's module")
    parser.add_argument("--handler", help="module:class to measure instead of WebhookHandler (a variant)")
    parser.add_argument("--delays", default="0.02,0", help="receiver delays in seconds, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "secret"
        secret.write_text(base64.b64encode(b"secret-key-for-the-webhook-bench").decode() + "\n")
        print("webhook handler alone: requests/s, CPU per request of the caller and of the receiver")
        print(f"{'receiver':>10} {'threads':>7} {'req/s':>8} {'CPU us/req':>10} {'receiver':>8} {'conns':>5}")
        handler_class = import_handler(args.handler) if args.handler else WebhookHandler
        for delay in (float(d) for d in args.delays.split(",")):
            r = run(delay, args.threads, args.requests, secret, args.receiver, handler_class)
            label = f"{delay * 1000:g} ms"
            print(
                f"{label:>10} {r['threads']:>7} {r['per_s']:>8.0f} {r['cpu_us']:>10.0f}"
                f" {r['receiver_cpu_us']:>8.0f} {r['connections']:>5}",
                flush=True,
            )


if __name__ == "__main__":
    main()
