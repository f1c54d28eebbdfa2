"""The webhook handler against a real local HTTP server, driven by a real RQ worker on a real Redis."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from devstack import make_message
from mailroom.config import load_settings
from mailroom.queue import MailQueue
from mailroom.redis_client import connect
from mailroom.schema import JobPayload
from tests.support import queue, run_worker, use_config, write_config

pytestmark = pytest.mark.integration

SECRET = b"0123456789abcdef0123456789abcdef"


@dataclass
class Application:
    """A stand-in for the application's API: answers ``status`` and records each request."""

    status: int = 200
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def application() -> Iterator[Application]:
    app = Application()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            app.requests.append((dict(self.headers), body))
            self.send_response(app.status)
            if 300 <= app.status < 400:
                self.send_header("Location", app.url + "/moved")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            app.requests.append((dict(self.headers), b"GET"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    app.url = f"http://127.0.0.1:{server.server_port}/api/v4/internal/mail_room/incoming_email"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app
    server.shutdown()
    server.server_close()


def _enqueue(redis_url: str, config_path, raw: bytes) -> str:
    settings = load_settings(config_path)
    mailbox = settings.mailboxes[0]
    payload = JobPayload(
        mailbox=mailbox.name,
        source="imap",
        uidvalidity=1,
        uid=7,
        received_at="2026-11-25T00:00:00+00:00",
        size=len(raw),
        truncated=False,
        message_id="m1@test",
        key="k1",
        key_header="To",
        from_address="a@example.com",
        subject="s",
        auto_reply=False,
        bounce=False,
        parse_error=None,
        raw=raw,
    )
    (result,) = MailQueue(connect(redis_url), settings).enqueue_batch(mailbox, [payload])
    return result.job_id


def _config(tmp_path, redis_url, url, retries):
    secret_file = tmp_path / "secret"
    secret_file.write_text(base64.b64encode(SECRET).decode() + "\n")
    mailbox = {
        "name": "support",
        "host": "127.0.0.1",
        "security": "none",
        "username": "u",
        "password": "p",
        "handler": "webhook",
        "webhook": {"url": url, "secret_file": str(secret_file)},
        "retries": retries,
    }
    return write_config(tmp_path / "c.yml", redis_url, mailbox)


def test_2xx_is_success_and_the_request_is_gitlab_mail_room_shaped(
    application, redis_url, tmp_path, monkeypatch
):
    path = _config(tmp_path, redis_url, application.url, [])
    use_config(monkeypatch, path)
    raw = make_message(1)
    job_id = _enqueue(redis_url, path, raw)
    run_worker(redis_url)
    assert FinishedJobRegistry(queue=queue(redis_url)).get_job_ids() == [job_id]
    ((headers, body),) = application.requests
    assert body == raw
    claims = jwt.decode(
        headers["Gitlab-Mailroom-Api-Request"], SECRET, algorithms=["HS256"], issuer="gitlab-mailroom"
    )
    assert "iat" in claims


def test_500_is_retried_then_kept_in_the_failed_registry(application, redis_url, tmp_path, monkeypatch):
    application.status = 500
    path = _config(tmp_path, redis_url, application.url, [0, 0])
    use_config(monkeypatch, path)
    raw = make_message(2)
    job_id = _enqueue(redis_url, path, raw)
    run_worker(redis_url)
    assert len(application.requests) == 3  # the first try and two retries
    failed = FailedJobRegistry(queue=queue(redis_url))
    assert failed.get_job_ids() == [job_id]
    job = queue(redis_url).fetch_job(job_id)
    assert job.get_status() == JobStatus.FAILED
    assert base64.b64decode(job.args[0]["raw"]) == raw  # the raw message is intact in the failed job


def test_4xx_is_permanent_and_not_retried(application, redis_url, tmp_path, monkeypatch):
    application.status = 403
    path = _config(tmp_path, redis_url, application.url, [0, 0])
    use_config(monkeypatch, path)
    job_id = _enqueue(redis_url, path, make_message(3))
    run_worker(redis_url)
    assert len(application.requests) == 1
    assert FailedJobRegistry(queue=queue(redis_url)).get_job_ids() == [job_id]


def test_a_redirect_is_not_followed_and_fails_permanently(application, redis_url, tmp_path, monkeypatch):
    """urllib would follow a 302 with a bodiless GET (JWT included), and its 200 would look delivered."""
    application.status = 302
    path = _config(tmp_path, redis_url, application.url, [0, 0])
    use_config(monkeypatch, path)
    job_id = _enqueue(redis_url, path, make_message(4))
    run_worker(redis_url)
    assert [body for _, body in application.requests] != [] and all(
        b != b"GET" for _, b in application.requests
    )
    assert len(application.requests) == 1
    assert FailedJobRegistry(queue=queue(redis_url)).get_job_ids() == [job_id]
