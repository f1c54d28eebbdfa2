"""Handlers for the worker tests; the reply key decides what each does.

``sleep-<seconds>-<n>`` sleeps that long, then records; ``hang-<n>`` sleeps an hour; ``fail-<n>`` raises;
anything else records at once. ``async_record`` is the same recording handler as an ``async def``.
Every call is counted in ``test:calls`` (message_id|pid|thread) before it does anything else.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import redis

import workers.jobs
from tests.support import record
from workers.incoming import IncomingEmail

CALLS_KEY = "test:calls"


def _note(email: IncomingEmail) -> str:
    key = email.key or ""
    client = redis.Redis.from_url(workers.jobs.settings().redis_url)
    client.rpush(CALLS_KEY, f"{email.message_id}|{os.getpid()}|{threading.get_ident()}")
    return key


def behave(email: IncomingEmail) -> str:
    key = _note(email)
    if key.startswith("sleep-"):
        time.sleep(float(key.split("-")[1]))
    elif key.startswith("hang-"):
        time.sleep(3600)
    elif key.startswith("fail-"):
        raise RuntimeError(f"handler failed on {key}")
    return record(email)


async def async_record(email: IncomingEmail) -> str:
    key = _note(email)
    if key.startswith("sleep-"):
        await asyncio.sleep(float(key.split("-")[1]))
    return record(email)
