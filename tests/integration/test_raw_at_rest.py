"""Raw mail at rest: a handled message's bytes leave Redis when its handler succeeds (keep_handled_raw
keeps them for result_ttl); a failed message keeps them for failure_ttl. Real Redis, both worker kinds."""

from __future__ import annotations

import base64

import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.integration.test_thread_worker import _settings, enqueue, worker
from tests.support import run_worker
from workers import jobs

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _job_settings_after():
    """_settings() hands the job module its settings: later tests must not inherit them."""
    yield
    jobs.configure(None)


def _raw_in_redis(redis_url: str, job_id: str) -> bytes:
    job = Job.fetch(job_id, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    return base64.b64decode(job.args[0]["raw"])


@pytest.mark.parametrize("kind", ["threads", "rq"])
def test_a_handled_message_leaves_no_raw_bytes_a_failed_one_keeps_them(tmp_path, redis_url, kind):
    settings = _settings(tmp_path, redis_url)
    handled, failed = enqueue(settings, ["now-1", "fail-2"])
    raw = _raw_in_redis(redis_url, failed)
    assert raw.startswith(b"From: ")
    if kind == "threads":
        worker(settings).work(burst=True)
    else:
        run_worker(redis_url)  # RQ's own SimpleWorker: its success path saves the job as well
    assert _raw_in_redis(redis_url, handled) == b""
    assert _raw_in_redis(redis_url, failed) == raw  # for `mailroom failed show` and requeue
    finished = Job.fetch(handled, connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    assert finished.args[0]["key"] == "now-1" and finished.args[0]["size"] > 0


def test_keep_handled_raw_keeps_them(tmp_path, redis_url):
    settings = _settings(tmp_path, redis_url, keep_handled_raw=True)
    (handled,) = enqueue(settings, ["now-1"])
    raw = _raw_in_redis(redis_url, handled)
    worker(settings).work(burst=True)
    assert raw and _raw_in_redis(redis_url, handled) == raw
