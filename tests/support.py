"""Helpers shared by the integration tests: configs for devstack servers, an in-process watcher, burst
workers, and a handler that records what it was given in Redis (its own record, next to RQ's)."""

from __future__ import annotations

import imaplib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import yaml
from imapclient.exceptions import IMAPClientError
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

import workers.jobs
from devstack import ImapAccount, count
from mailroom.app import Watchers, start_watchers
from mailroom.config import Settings, load_settings
from mailroom.imap.watcher import WatchLimits
from workers.incoming import IncomingEmail

HANDLED_KEY = "test:handled"
RECORDING_HANDLER = "tests.support:record"


def mailbox_config(account: ImapAccount, name: str = "support", **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": name,
        "host": account.host,
        "port": account.port,
        "security": "none",
        "username": account.username,
        "password": account.password,
        "folder": account.folder,
        "handler": RECORDING_HANDLER,
        "retries": [],
    }
    config.update(overrides)
    return config


def write_config(path: Path, redis_url: str, *mailboxes: dict[str, Any], **top: Any) -> Path:
    path.write_text(yaml.safe_dump({"redis_url": redis_url, "mailboxes": list(mailboxes), **top}))
    return path


def use_config(monkeypatch: Any, path: Path) -> Settings:
    """Point this process (the in-process worker's job function) at the config file."""
    monkeypatch.setenv("MAILROOM_CONFIG", str(path))
    workers.jobs.settings.cache_clear()
    workers.jobs._handler.cache_clear()
    return load_settings(path)


def record(email: IncomingEmail) -> str:
    """A handler that remembers each message it handled: RPUSH message_id|key."""
    client = redis.Redis.from_url(workers.jobs.settings().redis_url)
    client.rpush(HANDLED_KEY, f"{email.message_id}|{email.key}")
    return "recorded"


def handled(redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    return [item.decode() for item in client.lrange(HANDLED_KEY, 0, -1)]


def queue(redis_url: str, name: str = "incoming_email") -> Queue:
    return Queue(name, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)


def run_worker(redis_url: str, *names: str) -> None:
    """Work the queues in this process until they are empty."""
    connection = redis.Redis.from_url(redis_url)
    queues = [
        Queue(n, connection=connection, serializer=JSONSerializer) for n in names or ("incoming_email",)
    ]
    SimpleWorker(queues, connection=connection, serializer=JSONSerializer).work(burst=True)


@contextmanager
def watching(settings: Settings, limits: WatchLimits | None = None) -> Iterator[Watchers]:
    stop = threading.Event()
    running = start_watchers(settings, stop, limits)
    try:
        yield running
    finally:
        stop.set()
        assert running.join(10), "watcher did not stop within 10 s"


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def polled_count(
    host: str, port: int, user: str, password: str, criteria: Sequence[str] = ("UNSEEN",)
) -> int:
    """devstack's count for a wait_for loop: -1 when Dovecot answers the polling login or SELECT with a
    temporary error (seen on a loaded machine: UNAVAILABLE, SERVERBUG), so the loop asks again."""
    try:
        return count(host, port, user, password, criteria=criteria)
    except (imaplib.IMAP4.error, IMAPClientError, OSError):
        return -1
