"""`mailroom watch` as a real process: it delivers, and SIGTERM stops it cleanly and quickly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from devstack import append_messages, count, make_message
from tests.support import mailbox_config, queue, wait_for, write_config

pytestmark = pytest.mark.integration


def test_sigterm_stops_the_watcher_within_ten_seconds(imap_account, redis_url, tmp_path):
    config = write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account), log_format="json")
    process = subprocess.Popen(
        [sys.executable, "-c", "from mailroom.cli import main; main()", "--config", str(config), "watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        imap = (imap_account.host, imap_account.port, imap_account.username, imap_account.password)
        append_messages(*imap, [make_message(1)])
        wait_for(lambda: count(*imap) == 0)
        assert len(queue(redis_url)) == 1
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
        print(f"watch stopped {time.monotonic() - started:.2f} s after SIGTERM")
    finally:
        process.kill()
    output = process.stdout.read().decode()
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
    assert code == 0, output
    assert events[-1] == "watcher_stopped"
    assert "message_enqueued" in events
