"""`mailroom failed list` and `requeue --all` stream: their memory stays flat however many failed messages
wait. 40 failed 2 MB messages took 270-350 MB to print one row when every job was loaded whole.

The figures are peak RSS of the real command (a subprocess, measured by wait4), printed for the record;
the bound is generous (the machine is shared): it fails only if messages are loaded together again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devstack import make_message
from mailroom.inject import inject
from mailroom.queue import MailQueue
from mailroom.redis_client import connect
from tests.support import run_worker, use_config, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = 40
SIZE = 2 * 1024 * 1024
BOUND_MB = 150  # the old listing measured 347 MB here, the streamed one 50 MB (imports alone: 49 MB)


# Runs the CLI and, as the process exits, prints its peak RSS (VmHWM: this process's own, unlike
# ru_maxrss, which Linux carries over exec from the forking test process).
_MEASURED = """
import atexit, sys
def report():
    with open("/proc/self/status") as status:
        peak = next(line for line in status if line.startswith("VmHWM:"))
    sys.stderr.write("\\n" + peak)
atexit.register(report)
from mailroom.cli import main
sys.argv[0] = "mailroom"
main()
"""


def peak_rss_mb(config: Path, *args: str) -> tuple[float, str]:
    """Run ``mailroom ARGS --config CONFIG``; its peak RSS in MB and its stdout."""
    command = [sys.executable, "-c", _MEASURED, *args, "--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_kb = int(done.stderr.rstrip().splitlines()[-1].split()[1])
    return peak_kb / 1024, done.stdout


@pytest.mark.timeout(300)
def test_listing_and_requeueing_40_failed_2mb_messages_stays_flat(redis_url, tmp_path, monkeypatch):
    box = {"name": "support", "host": "127.0.0.1", "security": "none", "username": "u", "password": "p",
           "handler": "tests.integration.test_cli_failed_bulk:always_fails", "retries": []}  # fmt: skip
    config = write_config(tmp_path / "c.yml", redis_url, box)
    settings = use_config(monkeypatch, config)
    mail_queue = MailQueue(connect(redis_url), settings)
    for i in range(MESSAGES):
        inject(mail_queue, settings.mailboxes[0], make_message(i, size=SIZE))
    run_worker(redis_url)

    no_history = tmp_path / "no-history.yml"  # history off: each job's payload is read, one at a time
    no_history.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "history_ttl": 0}))
    figures = {}
    for name, cfg, args in [
        ("failed list", config, ["failed", "list"]),
        ("failed list --json", config, ["failed", "list", "--json"]),
        ("failed list (history off)", no_history, ["failed", "list"]),
        ("requeue --all --dry-run", config, ["requeue", "--all", "--dry-run"]),
    ]:
        figures[name], out = peak_rss_mb(cfg, *args)
        if "--json" in args:
            assert len(json.loads(out)) == MESSAGES
        elif "list" in args:
            assert f"{MESSAGES} failed message(s)" in out
    print("peak RSS, 40 failed 2 MB messages: " + ", ".join(f"{k} {v:.0f} MB" for k, v in figures.items()))
    assert all(figure < BOUND_MB for figure in figures.values()), figures
