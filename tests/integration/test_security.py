"""Security basics on real servers: TLS verified by default, JSON-only jobs, secrets kept out of output."""

from __future__ import annotations

import base64
import http.server
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import redis
from rq import Queue
from rq.registry import FailedJobRegistry

from devstack import append_messages, count, make_message
from tests.chaos.harness import ROOT, MailroomProcess, imap, wait_for_event
from tests.support import mailbox_config, queue, use_config, wait_for, watching, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _reap_processes():
    yield
    MailroomProcess.reap()


def _tls_mailbox(dovecot, account, **overrides):
    return mailbox_config(account, security="tls", port=dovecot.imaps_port, **overrides)


def test_tls_refuses_an_unknown_ca_by_default_and_accepts_it_with_ca_file(
    tls_dovecot, redis_url, tmp_path, monkeypatch
):
    dovecot, ca_path = tls_dovecot
    account = dovecot.add_user("tls", "secret")
    append_messages(*imap(account), [make_message(1)])

    settings = use_config(
        monkeypatch, write_config(tmp_path / "a.yml", redis_url, _tls_mailbox(dovecot, account))
    )
    with watching(settings) as running:
        status = running.watchers[0].status
        wait_for(lambda: status.last_error is not None, timeout=30)
    print("without ca_file:", status.last_error)
    assert "CERTIFICATE_VERIFY_FAILED" in status.last_error
    assert len(queue(redis_url)) == 0 and count(*imap(account)) == 1

    settings = use_config(
        monkeypatch,
        write_config(tmp_path / "b.yml", redis_url, _tls_mailbox(dovecot, account, ca_file=str(ca_path))),
    )
    with watching(settings):
        wait_for(lambda: count(*imap(account)) == 0, timeout=30)
    assert len(queue(redis_url)) == 1


class _Boom:
    """Unpickling this creates ``marker``: proof that someone unpickled what Redis held."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_worker_refuses_a_pickled_job_without_unpickling_it(imap_account, redis_url, tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    config = write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account))
    settings = use_config(monkeypatch, config)
    connection = redis.Redis.from_url(redis_url)
    # RQ's default serializer is pickle: this is what a careless or hostile writer would put there.
    Queue("incoming_email", connection=connection).enqueue(
        "workers.jobs.handle_email", _Boom(marker), job_id="pickled"
    )
    with watching(settings):  # an honest message behind it
        append_messages(*imap(imap_account), [make_message(1)])
        wait_for(lambda: count(*imap(imap_account)) == 0)
    worker = MailroomProcess(config, tmp_path / "worker.log", "worker", "--burst").start()
    assert worker.proc is not None and worker.proc.wait(60) == 0
    assert not marker.exists(), "the worker unpickled a job"
    assert FailedJobRegistry(queue=queue(redis_url)).get_job_ids() == ["pickled"]
    assert len(connection.lrange("test:handled", 0, -1)) == 1  # the line kept moving


IMAP_PASSWORD = "imap-pw-Zq7!unlikely"
WEBHOOK_SECRET = b"webhook-secret-Xk4-unlikely"
SENTRY_KEY = "sentrykey0123456789unlikely"
REDIS_PASSWORD = "redis-pw-Vb9-unlikely"


class _Hook(http.server.BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, str]]] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Hook.calls.append(dict(self.headers))
        self.send_response(500 if len(_Hook.calls) == 1 else 204)  # one transient failure, logged
        self.end_headers()

    def log_message(self, *args):
        pass


def _secrets_in(text: str) -> list[str]:
    secret_b64 = base64.b64encode(WEBHOOK_SECRET).decode()
    values = (IMAP_PASSWORD, WEBHOOK_SECRET.decode(), secret_b64, SENTRY_KEY, REDIS_PASSWORD)
    return [value for value in values if value in text]


@pytest.mark.timeout(120)
def test_secrets_never_reach_logs_or_check_config(dovecot, redis_url, tmp_path):
    account = dovecot.add_user("secretive", IMAP_PASSWORD)
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text(base64.b64encode(WEBHOOK_SECRET).decode() + "\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.calls = []
    try:
        mailbox = mailbox_config(
            account,
            handler="webhook",
            webhook={"url": f"http://127.0.0.1:{server.server_port}/mail", "secret_file": str(secret_file)},
            retries=[0],
        )
        config = write_config(tmp_path / "c.yml", redis_url, mailbox, log_level="debug")
        watch_log, worker_log = tmp_path / "watch.log", tmp_path / "worker.log"
        watcher = MailroomProcess(config, watch_log).start()
        wait_for_event(watch_log, "imap_connected", timeout=60)
        append_messages(*imap(account), [make_message(1)])
        wait_for(lambda: count(*imap(account)) == 0, timeout=30)
        code, _ = watcher.terminate()
        assert code == 0
        worker = MailroomProcess(config, worker_log, "worker", "--burst").start()
        assert worker.proc is not None and worker.proc.wait(60) == 0
        assert len(_Hook.calls) == 2  # the 500, then the retry delivered it, signed

        # A wrong password, so the login failure is logged too
        bad = dict(mailbox, password=IMAP_PASSWORD + "x")
        bad_config = write_config(tmp_path / "bad.yml", redis_url, bad, log_level="debug")
        refused_log = tmp_path / "refused.log"
        refused = MailroomProcess(bad_config, refused_log).start()
        wait_for_event(refused_log, "imap_login_failed", timeout=60)
        refused.terminate()
    finally:
        server.shutdown()

    full = dict(mailbox, password=IMAP_PASSWORD)
    check_config = write_config(
        tmp_path / "check.yml",
        f"redis://user:{REDIS_PASSWORD}@127.0.0.1:6379/0",
        full,
        sentry_dsn=f"https://{SENTRY_KEY}@o1.ingest.sentry.io/1",
    )
    checked = subprocess.run(
        [sys.executable, "-m", "mailroom", "--config", str(check_config), "check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    outputs = {
        "watch": watch_log.read_text(),
        "worker": worker_log.read_text(),
        "login refused": refused_log.read_text(),
        "check-config": checked.stdout + checked.stderr,
    }
    for name, text in outputs.items():
        print(f"{name}: {len(text.splitlines())} lines, secrets found: {_secrets_in(text)}")
        assert not _secrets_in(text), f"{name} output leaks a secret"
    assert "imap_login_failed" in outputs["login refused"]
    assert "handler_failed" in outputs["worker"]  # the 500 was logged, and still no secret
