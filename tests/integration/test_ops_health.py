"""/healthz, /readyz and /metrics on real servers: readiness flips with Redis and Dovecot, counters move."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
import redis
from prometheus_client import REGISTRY
from rq import Queue
from rq.serializers import JSONSerializer

from devstack import append_messages, count, make_message
from mailroom.app import serve_watcher_health, start_watchers
from mailroom.config import load_settings
from mailroom.threadworker import ThreadWorker
from mailroom.worker import WorkerRef, serve_worker_health
from tests.support import mailbox_config, use_config, wait_for, write_config

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.chaos
@pytest.mark.timeout(120)
def test_readiness_flips_with_redis_and_dovecot(make_redis, make_dovecot, tmp_path):
    server = make_redis()
    dovecot = make_dovecot(users={"incoming": "secret"})
    account = dovecot.account("incoming")
    box = mailbox_config(account, keepalive_interval=1, timeout=3)
    settings = load_settings(write_config(tmp_path / "c.yml", server.url, box), environ={})
    stop = threading.Event()
    watchers = start_watchers(settings, stop)
    http = serve_watcher_health(settings, watchers, port=0)
    try:
        wait_for(lambda: get(http.port, "/readyz")[0] == 200)
        assert get(http.port, "/healthz")[0] == 200

        server.stop()
        _code, body = wait_for(lambda: (r := get(http.port, "/readyz"))[0] == 503 and r)
        assert any(c["name"] == "redis" and not c["ok"] for c in json.loads(body)["checks"])
        assert get(http.port, "/healthz")[0] == 200  # alive: not a reason to restart the pod
        assert b"mailroom_redis_up 0.0" in get(http.port, "/metrics")[1]
        server.start()
        wait_for(lambda: get(http.port, "/readyz")[0] == 200)

        dovecot.stop()
        _code, body = wait_for(lambda: (r := get(http.port, "/readyz"))[0] == 503 and r)
        checks = {c["name"]: c for c in json.loads(body)["checks"]}
        assert not checks["imap:support"]["ok"] and checks["redis"]["ok"]
        dovecot.start()
        wait_for(lambda: get(http.port, "/readyz")[0] == 200, timeout=60)  # within the backoff cap
        assert get(http.port, "/nope")[0] == 404
    finally:
        stop.set()
        http.stop()
        assert watchers.join(10)


def test_metrics_move_by_the_batch(imap_account, redis_url, tmp_path, monkeypatch):
    box = mailbox_config(imap_account, name="metrics")
    settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, box))
    imap = (imap_account.host, imap_account.port, imap_account.username, imap_account.password)
    labels = {"mailbox": "metrics"}
    before = {
        name: sample(name, **labels)
        for name in (
            "mailroom_messages_fetched_total",
            "mailroom_messages_enqueued_total",
            "mailroom_messages_marked_total",
            "mailroom_auto_replies_total",
            "mailroom_arrival_to_enqueue_seconds_count",
        )
    }
    jobs_before = sample("mailroom_jobs_total", queue="incoming_email", outcome="succeeded")
    batch = [make_message(i) for i in range(4)]
    batch.append(make_message(4, headers=[("Auto-Submitted", "auto-replied")]))
    append_messages(*imap, batch)
    stop = threading.Event()
    watchers = start_watchers(settings, stop)
    http = serve_watcher_health(settings, watchers, port=0)
    try:
        wait_for(lambda: count(*imap) == 0)
        text = get(http.port, "/metrics")[1].decode()
    finally:
        stop.set()
        http.stop()
        assert watchers.join(10)
    delta = {name: sample(name, **labels) - value for name, value in before.items()}
    print("metric deltas:", delta)
    assert delta == {
        "mailroom_messages_fetched_total": 5,
        "mailroom_messages_enqueued_total": 5,
        "mailroom_messages_marked_total": 5,
        "mailroom_auto_replies_total": 1,
        "mailroom_arrival_to_enqueue_seconds_count": 5,
    }
    assert 'mailroom_queue_depth{queue="incoming_email"} 5.0' in text
    assert 'mailroom_failed_jobs{queue="incoming_email"} 0.0' in text

    connection = redis.Redis.from_url(redis_url)
    q = Queue("incoming_email", connection=connection, serializer=JSONSerializer)
    worker = ThreadWorker([q], connection=connection, serializer=JSONSerializer)
    worker_http = serve_worker_health(settings, [q.name], WorkerRef(worker), port=0)
    try:
        worker.work(burst=True)
        assert get(worker_http.port, "/healthz")[0] == 200  # heartbeat sent by the loop
        assert get(worker_http.port, "/readyz")[0] == 200
        text = get(worker_http.port, "/metrics")[1].decode()
    finally:
        worker_http.stop()
    assert sample("mailroom_jobs_total", queue="incoming_email", outcome="succeeded") - jobs_before == 5
    assert 'mailroom_queue_depth{queue="incoming_email"} 0.0' in text
    assert "mailroom_job_seconds_count" in text
