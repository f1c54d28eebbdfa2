"""Handlers for the chaos scenarios, all built on the recording handler in tests.support.

Keys decide the behaviour, so one mailbox can carry ordinary and misbehaving messages side by side:
``slow*`` notes its pid in ``test:started`` and sleeps before recording (time to SIGKILL the worker
mid-job), ``poison*`` always raises.
"""

from __future__ import annotations

import os
import time

import redis

import workers.jobs
from tests.support import record
from workers.incoming import IncomingEmail

STARTED_KEY = "test:started"
SLOW_SECONDS = 3.0


def slow_or_record(email: IncomingEmail) -> str:
    client = redis.Redis.from_url(workers.jobs.settings().redis_url)
    client.rpush(STARTED_KEY, f"{email.message_id}|{os.getpid()}")
    if (email.key or "").startswith("slow"):
        time.sleep(SLOW_SECONDS)
    return record(email)


def poison_or_record(email: IncomingEmail) -> str:
    if (email.key or "").startswith("poison"):
        raise RuntimeError("this handler always fails on poison messages")
    return record(email)
