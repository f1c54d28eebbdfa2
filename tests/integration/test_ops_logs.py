"""Logs and operator output never contain a secret; `mailroom check` on the real stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from devstack import append_messages, count, make_message
from mailroom.cli import cli
from tests.support import mailbox_config, queue, wait_for, write_config

pytestmark = pytest.mark.integration

PASSWORD = "Known-IMAP-Pa55word-7f3a"
REDIS_PASSWORD = "Known-Redis-Pa55word-91c2"
SENTRY_KEY = "0123456789abcdef0123456789abcdef"


def mailroom(*args: str, config, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from mailroom.cli import main; main()",
            "--config",
            str(config),
            "--log-format",
            "json",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MAILROOM_CONFIG": str(config)},
        **kwargs,
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_no_secret_in_any_output(make_redis, make_dovecot, tmp_path):
    server = make_redis()
    server.client().config_set("requirepass", REDIS_PASSWORD)
    dovecot = make_dovecot(users={"incoming": PASSWORD})
    account = dovecot.account("incoming")
    url = f"redis://:{REDIS_PASSWORD}@{server.host}:{server.port}/0"
    pw_file = tmp_path / "imap-password"
    pw_file.write_text(PASSWORD + "\n")
    good = mailbox_config(account, handler="log", password=None, password_file=str(pw_file))
    config = write_config(
        tmp_path / "c.yml", url, good, log_level="debug", sentry_dsn=f"https://{SENTRY_KEY}@o0.invalid/1"
    )
    imap = (account.host, account.port, account.username, PASSWORD)
    append_messages(*imap, [make_message(i, subject=f"body secret {i}") for i in range(3)])

    started = time.monotonic()
    watcher = mailroom("watch", config=config)
    try:
        wait_for(lambda: count(*imap) == 0, timeout=30)
    finally:
        watcher.send_signal(signal.SIGTERM)
        watch_out, _ = watcher.communicate(timeout=20)
    print(f"watcher done after {time.monotonic() - started:.1f} s")
    worker = mailroom("worker", "--burst", config=config)
    worker_out, _ = worker.communicate(timeout=60)
    print(f"worker done after {time.monotonic() - started:.1f} s")
    outputs = [watch_out, worker_out]
    runner = CliRunner()
    for args in (["check-config"], ["check"], ["failed", "list"], ["history"], ["check", "--json"]):
        outputs.append(runner.invoke(cli, ["--config", str(config), *args]).output.encode())
        print(f"{args} done after {time.monotonic() - started:.1f} s")
    text = b"\n".join(outputs).decode("utf-8", "replace")
    print(f"{len(text)} characters of output checked; watcher exit {watcher.returncode}")
    assert "message_enqueued" in text and "email_received" in text
    for secret in (PASSWORD, REDIS_PASSWORD, SENTRY_KEY, "Body of test message"):
        assert secret not in text, f"{secret!r} leaked"


def test_check_reports_each_fact_and_fails_without_workers(imap_account, redis_url, tmp_path):
    config = write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account))
    append_messages(
        imap_account.host, imap_account.port, imap_account.username, imap_account.password, [make_message(1)]
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "check", "--json"])
    facts = {r["name"]: r for r in json.loads(result.output)}
    print(result.output)
    assert facts["support: tcp"]["outcome"] == "ok"
    assert facts["support: tls"]["outcome"] == "warn"  # security: none on loopback (the devstack)
    assert facts["support: login"]["outcome"] == "ok" and facts["support: folder"]["outcome"] == "ok"
    assert facts["support: idle"]["outcome"] == "ok"
    assert facts["support: waiting"]["detail"].startswith("1 message")
    assert facts["redis"]["outcome"] == "ok"
    assert facts["workers:incoming_email"]["outcome"] == "fail"  # nobody is listening
    assert result.exit_code == 1
    assert len(queue(redis_url)) == 0  # check changed nothing


def test_check_names_a_refused_login(make_dovecot, redis_url, tmp_path):
    # A private Dovecot: its failed-login penalty must not slow down the shared one.
    account = make_dovecot(users={"incoming": "right"}).account("incoming")
    config = write_config(tmp_path / "w.yml", redis_url, mailbox_config(account, password="wrong"))
    result = CliRunner().invoke(cli, ["--config", str(config), "check"])
    lines = result.output.splitlines()
    assert any(line.startswith("✗ support: login") for line in lines), lines
    assert "wrong" not in result.output.replace("support: login", "") and result.exit_code == 1
