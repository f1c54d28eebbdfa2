"""The suppression list: addresses mail must not be sent to, kept in Redis.

An address goes on the list when the provider reports a permanent failure, too many temporary failures
within a window, a spam complaint or an unsubscribe (see ``webhooks.py``), or by hand
(``mailroom suppressions add``). ``outbound.send`` and the rejection replies refuse suppressed recipients.

Keys (one Redis hash holds the whole list, so its size is one HLEN):

    mailroom:suppressions                 hash: normalised address -> JSON record
    mailroom:tempfail:<address>           sorted set of temporary-failure event ids scored by time

Addresses are normalised: surrounding whitespace and angle brackets go, the domain is lower-cased, the
local part is kept as given (RFC 5321 lets it be case-sensitive).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from mailroom.provider.metrics import SUPPRESSIONS_ADDED

SUPPRESSIONS_KEY = "mailroom:suppressions"
TEMPFAIL_PREFIX = "mailroom:tempfail:"


def normalise(address: str) -> str:
    """``' Jane.Doe@Example.COM '`` -> ``'Jane.Doe@example.com'``; ValueError if it is not an address."""
    value = address.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or any(ch.isspace() for ch in value):
        raise ValueError(f"not an email address: {address!r}")
    return f"{local}@{domain.lower()}"


@dataclass(frozen=True)
class Suppression:
    address: str
    reason: str  # bounce, temporary_failures, complaint, unsubscribe, manual
    code: str | None = None  # the SMTP code the provider reported
    message: str | None = None  # the remote server's words, or an operator's note
    source: str = "manual"  # mailgun, manual
    created_at: str = ""  # ISO 8601, UTC

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Suppression:
        data = json.loads(raw)
        return cls(
            **{k: data.get(k) for k in ("address", "reason", "code", "message", "source", "created_at")}
        )


class SuppressionList:
    """The list in one Redis database. Thread-safe (redis-py's pool); every call is one round trip."""

    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection

    @classmethod
    def from_url(cls, url: str) -> SuppressionList:
        return cls(redis.Redis.from_url(url))

    def is_suppressed(self, address: str) -> bool:
        return bool(self._redis.hexists(SUPPRESSIONS_KEY, normalise(address)))

    def suppressed(self, addresses: list[str]) -> list[str]:
        """Which of ``addresses`` are suppressed (normalised), in one round trip."""
        names = [normalise(a) for a in addresses]
        if not names:
            return []
        found = self._redis.hmget(SUPPRESSIONS_KEY, names)
        return [name for name, record in zip(names, found, strict=True) if record is not None]

    def get(self, address: str) -> Suppression | None:
        raw = self._redis.hget(SUPPRESSIONS_KEY, normalise(address))
        return Suppression.from_json(raw) if raw is not None else None

    def suppress(
        self,
        address: str,
        reason: str = "manual",
        *,
        code: str | int | None = None,
        message: str | None = None,
        source: str = "manual",
        at: float | None = None,
    ) -> Suppression:
        """Put ``address`` on the list (replacing an earlier record) and return the record."""
        when = datetime.fromtimestamp(time.time() if at is None else at, UTC)
        record = Suppression(
            address=normalise(address),
            reason=reason,
            code=None if code is None else str(code),
            message=message[:1000] if message else None,
            source=source,
            created_at=when.isoformat(timespec="seconds"),
        )
        self._redis.hset(SUPPRESSIONS_KEY, record.address, json.dumps(record.as_dict()))
        SUPPRESSIONS_ADDED.labels(reason).inc()
        return record

    def unsuppress(self, address: str) -> bool:
        """Take ``address`` off the list (and forget its temporary failures); False if it was not on it."""
        name = normalise(address)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(SUPPRESSIONS_KEY, name)
        pipe.delete(TEMPFAIL_PREFIX + name)
        removed, _ = pipe.execute()
        return bool(removed)

    def count(self) -> int:
        return int(self._redis.hlen(SUPPRESSIONS_KEY))

    def __iter__(self) -> Iterator[Suppression]:
        """Every record, in no particular order (HSCAN: never blocks Redis on a long list)."""
        for _, raw in self._redis.hscan_iter(SUPPRESSIONS_KEY):
            yield Suppression.from_json(raw)

    def record_temporary_failure(self, address: str, event_id: str, window: int, at: float) -> int:
        """Remember one temporary failure; return how many ``address`` had within the last ``window`` s.

        Members are event ids, so a provider retrying the same webhook does not count twice.
        """
        key = TEMPFAIL_PREFIX + normalise(address)
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(key, {event_id: at})
        pipe.zremrangebyscore(key, "-inf", at - window)
        pipe.zcard(key)
        pipe.expire(key, window)
        return int(pipe.execute()[2])
