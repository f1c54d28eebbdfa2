"""``async def`` handlers: their coroutines run on one event loop thread shared by the whole process.

The worker's threads each wait for their own coroutine, so N jobs in flight are N coroutines on the
loop at once. A handler that awaits is then as concurrent as the worker allows, without a loop per job
(``asyncio.run`` per call would also throw away every connection the handler's client pooled).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The process's handler loop, started on first use (in the process that uses it: after a fork,
    a work horse starts its own)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed() or not _thread_alive():
            _loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_loop.run_forever, name="handler-loop", daemon=True)
            thread.start()
            _threads[id(_loop)] = thread
        return _loop


_threads: dict[int, threading.Thread] = {}


def _thread_alive() -> bool:
    thread = _threads.get(id(_loop))
    return thread is not None and thread.is_alive()


def run(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` on the handler loop and wait for its result here."""
    coroutine = cast(Coroutine[Any, Any, T], awaitable)
    if not asyncio.iscoroutine(coroutine):
        coroutine = _wrap(awaitable)
    return asyncio.run_coroutine_threadsafe(coroutine, loop()).result()


async def _wrap(awaitable: Awaitable[T]) -> T:
    return await awaitable
