"""Graph mailboxes end to end: the local Graph server (tests/graphserver.py) and token endpoint
(tests/oauthserver.py), real Redis, RQ jobs run in-process. Each message makes exactly one job."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devstack import make_message
from mailroom.app import _graph_watcher, make_sink
from mailroom.graph.state import delta_key
from mailroom.queue import MailQueue
from mailroom.redis_client import connect
from tests.graphserver import GraphServer
from tests.oauthserver import OAuthServer
from tests.support import (
    RECORDING_HANDLER,
    handled,
    queue,
    run_worker,
    use_config,
    wait_for,
    watching,
    write_config,
)

pytestmark = pytest.mark.integration
USER = "support@contoso.example"


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer(username=USER) as server:
        yield server


@pytest.fixture
def graph(oauth: OAuthServer) -> Iterator[GraphServer]:
    with GraphServer(user=USER, token_ok=oauth.active) as server:
        yield server


def graph_mailbox(tmp_path: Path, oauth: OAuthServer, graph: GraphServer, **overrides: Any) -> dict[str, Any]:
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret\n")
    config: dict[str, Any] = {
        "name": "cloud",
        "kind": "graph",
        "graph": {
            "tenant": "contoso",
            "client_id": "mailroom",
            "client_secret_file": str(secret),
            "user": USER,
            "token_url": oauth.token_url,
            "base_url": graph.base_url,
            "page_size": 10,
        },
        "poll_interval": 0.2,
        "handler": RECORDING_HANDLER,
        "retries": [],
    }
    config.update(overrides)
    return config


def _settings(tmp_path, monkeypatch, redis_url, oauth, graph, **overrides):
    path = write_config(tmp_path / "c.yml", redis_url, graph_mailbox(tmp_path, oauth, graph, **overrides))
    return use_config(monkeypatch, path)


def test_backlog_then_new_mail_between_polls(tmp_path, monkeypatch, redis_url, oauth, graph):
    for i in range(25):  # three delta pages of 10
        graph.deliver(make_message(i))
    settings = _settings(tmp_path, monkeypatch, redis_url, oauth, graph)
    with watching(settings):
        wait_for(lambda: not graph.unread(), timeout=30)
        assert len(queue(redis_url)) == 25
        graph.requests.clear()
        for i in range(25, 28):
            graph.deliver(make_message(i))
        wait_for(lambda: not graph.unread(), timeout=30)
        assert len(queue(redis_url)) == 28
    jobs = queue(redis_url).jobs
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", job.id) for job in jobs)
    ids = {m.id for m in graph.in_folder()}
    assert {job.args[0]["uid"] for job in jobs} == ids  # the guard and job carry the immutable id
    assert {job.args[0]["source"] for job in jobs} == {"graph"}
    assert all('IdType="ImmutableId"' in prefer for prefer in graph.prefer_headers)
    # after the backlog, polls follow the delta link: no full listing of the folder again
    delta_calls = [query for method, path, query in graph.requests if path.endswith("/delta")]
    print(f"requests after the backlog: {len(graph.requests)}, of which delta: {len(delta_calls)}")
    assert delta_calls and all("deltatoken" in q or "skiptoken" in q for q in delta_calls), delta_calls
    assert redis.Redis.from_url(redis_url).get(delta_key(settings.mailboxes[0])) is not None
    run_worker(redis_url)
    keys = sorted(int(r.split("|key")[1]) for r in handled(redis_url))
    assert keys == list(range(28))


def test_throttling_and_an_expired_token_are_ridden_out(tmp_path, monkeypatch, redis_url, oauth, graph):
    settings = _settings(tmp_path, monkeypatch, redis_url, oauth, graph)
    graph.throttle_next = 3  # 429 Retry-After: 1, three times
    graph.retry_after = 1
    graph.deliver(make_message(1))
    with watching(settings) as running:
        wait_for(lambda: not graph.unread(), timeout=30)
        oauth.revoke_all()  # the cached token dies: Graph answers 401, the client gets a fresh one
        graph.deliver(make_message(2))
        wait_for(lambda: not graph.unread(), timeout=30)
        client = running.watchers[0].source.client
    print(f"throttled answers honoured: {client.throttled}; token requests: {len(oauth.token_requests)}")
    assert client.throttled == 3
    assert len(oauth.token_requests) == 2
    assert len(queue(redis_url)) == 2


def test_expired_delta_link_restarts_the_sync_without_doubles(tmp_path, monkeypatch, redis_url, oauth, graph):
    settings = _settings(tmp_path, monkeypatch, redis_url, oauth, graph)
    graph.deliver(make_message(1))
    graph.deliver(make_message(2))
    with watching(settings):
        wait_for(lambda: not graph.unread(), timeout=30)
        graph.expire_delta_links()
        graph.deliver(make_message(3))
        wait_for(lambda: not graph.unread(), timeout=30)
    assert len(queue(redis_url)) == 3
    run_worker(redis_url)
    assert sorted(r.split("|")[1] for r in handled(redis_url)) == ["key1", "key2", "key3"]


@pytest.mark.chaos
def test_restart_mid_batch_loses_nothing_and_doubles_nothing(tmp_path, monkeypatch, redis_url, oauth, graph):
    settings = _settings(tmp_path, monkeypatch, redis_url, oauth, graph)
    mailbox = settings.mailboxes[0]
    for i in range(3):
        graph.deliver(make_message(i))
    mail_queue = MailQueue(connect(redis_url), settings)
    first = _graph_watcher(mailbox, mail_queue, threading.Event())
    real_sink = make_sink(mailbox, mail_queue)

    def enqueue_then_die(batch):
        real_sink(batch)
        raise RuntimeError("the process died after the enqueue, before marking")

    first.sink = enqueue_then_die
    with pytest.raises(RuntimeError):
        first.catch_up(first.source.connect())
    assert len(graph.unread()) == 3  # nothing marked
    assert len(queue(redis_url)) == 3
    assert redis.Redis.from_url(redis_url).get(delta_key(mailbox)) is None  # the round was not committed

    with watching(settings):  # the restarted process
        wait_for(lambda: not graph.unread(), timeout=30)
    assert len(queue(redis_url)) == 3  # redelivered, and the guard made it one job each
    run_worker(redis_url)
    assert sorted(r.split("|")[1] for r in handled(redis_url)) == ["key0", "key1", "key2"]


def test_wrong_client_secret_marks_nothing_and_says_why(tmp_path, monkeypatch, redis_url, oauth, graph):
    settings = _settings(tmp_path, monkeypatch, redis_url, oauth, graph)
    Path(settings.mailboxes[0].graph.client_secret_file).write_text("wrong\n")
    graph.deliver(make_message(1))
    with watching(settings) as running:
        status = running.watchers[0].status
        wait_for(lambda: status.last_error is not None, timeout=10)
        print(status.last_error)
        assert "invalid_client" in status.last_error and not status.connected
    assert len(graph.unread()) == 1
    assert len(queue(redis_url)) == 0
