"""Where a Graph mailbox's delta link lives between polls and across restarts: Redis.

The link is saved only after every message it covers was enqueued and marked, so a crash replays the
last round (the idempotency guard makes the replay harmless) instead of skipping it.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import redis
from redis.exceptions import RedisError

from mailroom.config import GraphMailbox
from mailroom.errors import GraphStateError

DELTA_PREFIX = "mailroom:graph:delta:"


class DeltaStore(Protocol):
    def get(self) -> str | None: ...
    def set(self, link: str) -> None: ...
    def clear(self) -> None: ...


def delta_key(config: GraphMailbox) -> str:
    """Per mailbox, and per (user, folder): pointing a mailbox elsewhere starts a fresh sync."""
    where = hashlib.sha256(f"{config.graph.user}\0{config.folder}".encode()).hexdigest()[:16]
    return f"{DELTA_PREFIX}{config.name}:{where}"


class RedisDeltaStore:
    def __init__(self, connection: redis.Redis, config: GraphMailbox) -> None:
        self.connection = connection
        self.key = delta_key(config)

    def get(self) -> str | None:
        try:
            value = self.connection.get(self.key)
        except RedisError as exc:
            raise GraphStateError(f"Redis did not answer for the delta link: {type(exc).__name__}") from exc
        return value.decode() if isinstance(value, bytes) else value

    def set(self, link: str) -> None:
        try:
            self.connection.set(self.key, link)
        except RedisError as exc:
            raise GraphStateError(f"Redis did not store the delta link: {type(exc).__name__}") from exc

    def clear(self) -> None:
        try:
            self.connection.delete(self.key)
        except RedisError as exc:
            raise GraphStateError(f"Redis did not drop the delta link: {type(exc).__name__}") from exc
