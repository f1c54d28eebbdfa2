"""Is this Redis safe to queue mail in? Eviction policy, persistence and replicas, read from ``INFO``.

mailroom marks a message done on the mail server once Redis has acknowledged its job, so a job Redis
later forgets is mail lost, and a guard key it forgets lets a redelivered message be queued twice:

- ``maxmemory-policy`` must be ``noeviction``: any other policy lets a full Redis drop keys, the queue
  list itself (``allkeys-*``: acknowledged jobs vanish) or the guard keys, the only keys with a TTL
  (``volatile-*``, the default of managed Redis services: a redelivered batch is queued twice).
  ``watch`` refuses to start on an evicting Redis; ``check`` shows it as ✗.
- persistence: without AOF (``appendonly yes``) with ``appendfsync everysec`` or ``always``, a restart or
  crash loses what was written since the last snapshot, jobs whose messages are already marked done.
  RDB snapshots alone count as off. A warning: some deployments accept that.
- replicas: an acknowledgement from the primary alone does not survive a failover to a replica that had
  not received the write yet. ``WAIT`` after each enqueue (``redis_min_replica_acks``, default 1 when
  replicas are connected) makes a short count an enqueue failure: the batch stays unmarked, and the
  guards make its retry safe.

The settings are read from ``INFO`` (managed Redis services often disable ``CONFIG``); ``appendfsync``
only exists in ``CONFIG GET``, so when that is refused it is reported unknown, not wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import structlog
from redis.exceptions import RedisError, ResponseError

from mailroom.config import Settings

SAFE_POLICY = "noeviction"
SAFE_FSYNC = frozenset({"everysec", "always"})


@dataclass(frozen=True)
class RedisSafety:
    """What INFO (and CONFIG GET, where allowed) says about one Redis; None: could not be read."""

    eviction_policy: str | None
    aof_enabled: bool | None
    appendfsync: str | None
    connected_replicas: int | None


def inspect(connection: redis.Redis) -> RedisSafety:
    """Read the settings; raises RedisError when Redis does not answer at all."""
    memory = _info(connection, "memory")
    persistence = _info(connection, "persistence")
    policy = memory.get("maxmemory_policy")
    aof = persistence.get("aof_enabled")
    return RedisSafety(
        eviction_policy=str(policy) if policy is not None else None,
        aof_enabled=bool(int(aof)) if aof is not None else None,
        appendfsync=_appendfsync(connection),
        connected_replicas=connected_replicas(connection),
    )


def _info(connection: redis.Redis, section: str) -> dict[str, Any]:
    try:
        info: dict[str, Any] = connection.info(section)
    except ResponseError:  # INFO renamed or restricted: unknown, not unreachable
        return {}
    return info


def _appendfsync(connection: redis.Redis) -> str | None:
    try:
        reply: dict[Any, Any] = connection.config_get("appendfsync")
    except ResponseError:  # CONFIG disabled, as managed Redis services do
        return None
    for key, value in reply.items():
        if key in ("appendfsync", b"appendfsync"):
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def eviction_problem(safety: RedisSafety) -> str | None:
    """Why this Redis must not hold mail, or None when its policy is noeviction (or unknown)."""
    policy = safety.eviction_policy
    if policy is None or policy == SAFE_POLICY:
        return None
    what = "guard keys (the only keys with a TTL)" if policy.startswith("volatile") else "queued jobs"
    return (
        f"maxmemory-policy is {policy}: a full Redis evicts {what}, so acknowledged mail is lost or "
        f"queued twice; set maxmemory-policy {SAFE_POLICY}"
    )


def persistence_problem(safety: RedisSafety) -> str | None:
    """What a restart of this Redis can lose, or None when AOF is on with a safe fsync (or unknown)."""
    if safety.aof_enabled is False:
        return (
            "persistence off (no AOF; RDB snapshots alone lose every write since the last one): a Redis "
            "restart loses queued jobs whose messages are already marked done; set appendonly yes, "
            "appendfsync everysec"
        )
    if safety.aof_enabled and safety.appendfsync is not None and safety.appendfsync not in SAFE_FSYNC:
        return (
            f"appendfsync {safety.appendfsync}: a crash of the Redis host can lose the last ~30 s of "
            "queued jobs whose messages are already marked done; set appendfsync everysec"
        )
    return None


def connected_replicas(connection: redis.Redis) -> int | None:
    """Replicas attached to this primary now (INFO replication), None when INFO is refused."""
    replicas = _info(connection, "replication").get("connected_slaves")
    return int(replicas) if replicas is not None else None


def replica_acks(settings: Settings, replicas: int | None) -> int:
    """How many replicas each enqueue waits for: the setting, else 1 when replicas are connected."""
    if settings.redis_min_replica_acks is not None:
        return settings.redis_min_replica_acks
    return 1 if (replicas or 0) > 0 else 0


def refusal_at_start(connection: redis.Redis, settings: Settings) -> str | None:
    """The watcher's start: the line to refuse with when this Redis evicts; persistence off and unknown
    settings are logged warnings. An unreachable Redis is not refused: the watcher waits for it."""
    log = structlog.get_logger("mailroom.redis")
    try:
        safety = inspect(connection)
    except RedisError as exc:
        log.warning("redis_settings_unknown", error=f"{type(exc).__name__}: {exc}")
        return None
    problem = eviction_problem(safety)
    if problem is not None:
        return problem
    if safety.eviction_policy is None:
        log.warning("redis_settings_unknown", setting="maxmemory-policy", hint="make sure it is noeviction")
    problem = persistence_problem(safety)
    if problem is not None:
        log.warning("redis_persistence_off", detail=problem)
    log.info(
        "redis_checked",
        maxmemory_policy=safety.eviction_policy,
        aof_enabled=safety.aof_enabled,
        appendfsync=safety.appendfsync,
        replicas=safety.connected_replicas,
        replica_acks=replica_acks(settings, safety.connected_replicas),
    )
    return None
