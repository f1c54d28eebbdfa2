"""The worker's start against a real Redis that dies at the worst moments: right after the worker
registered its birth (the retry must not take its own registration for another worker's), and, with
``--isolation fork``, a SIGTERM while it backs off is a clean exit 0."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from devstack import RedisServer
from devstack.ports import free_port
from mailroom.config import load_settings
from mailroom.threadworker import ThreadWorker
from tests.chaos.harness import MailroomProcess
from tests.integration.test_thread_worker import enqueue
from tests.support import handled, queue, wait_for, write_config
from workers import jobs

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, url: str) -> Path:
    mailbox = {
        "name": "support", "host": "127.0.0.1", "security": "none", "username": "u", "password": "p",
        "handler": "tests.worker_handlers:behave", "retries": [],
    }  # fmt: skip
    return write_config(tmp_path / "c.yml", url, mailbox, log_format="json")


@pytest.mark.timeout(120)
def test_redis_killed_right_after_the_birth_is_registered_the_start_is_retried(tmp_path):
    """Before: the retried start's register_birth raised 'There exists an active worker named ...
    already' (its own first attempt's registration, kept by the AOF) and the worker died."""
    server = RedisServer(tmp_path / "redis", persistent=True).start()
    try:
        settings = load_settings(_config(tmp_path, server.url))
        jobs.configure(settings)
        ids = enqueue(settings, [f"now-{i}" for i in range(20)])
        births: list[str] = []

        class DiesAfterBirth(ThreadWorker):
            def register_birth(self) -> None:
                super().register_birth()
                births.append(self.name)
                if len(births) == 1:  # the birth is written (fsynced): Redis dies before the rest
                    server.kill()
                    threading.Timer(1.5, server.start).start()

        connection = redis.Redis.from_url(server.url)
        worker = DiesAfterBirth([queue(server.url)], connection=connection, serializer=JSONSerializer)
        worker.work(burst=True, with_scheduler=False)
        assert len(births) == 2 and births[0] == births[1]
        assert len(handled(server.url)) == len(ids)
        assert BaseWorker.all(connection=connection) == []  # its death registered at the end
    finally:
        jobs.configure(None)
        server.kill()


@pytest.mark.timeout(90)
def test_fork_isolation_exits_0_on_sigterm_while_redis_is_away(tmp_path):
    """Before: RQ's signal handlers are installed only once its worker has started, so SIGTERM during
    the back-off killed the process by the default action (-15)."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    log = tmp_path / "worker.log"
    worker = MailroomProcess(_config(tmp_path, url), log, "worker", "--isolation", "fork").start()
    try:
        wait_for(lambda: log.read_text().count("Redis unavailable") >= 2, timeout=60, interval=0.2)
        time.sleep(0.3)  # well inside a back-off pause
        code, _ = worker.terminate(timeout=30)
        assert code == 0
    finally:
        worker.kill()
