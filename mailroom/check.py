"""``mailroom check``: is it working? One line per fact, each ok, failed, or a warning.

For every IMAP mailbox: TCP, TLS (certificate verified), login, folder selectable, the after_delivery
folder present (move:<folder>; mailroom does not create it), IDLE offered, messages waiting undone.
For every Microsoft Graph mailbox: the client-credentials token granted, the folder
reachable, messages waiting undone. Then Redis reachable, its eviction policy (✗ unless noeviction),
persistence and replicas (mailroom.redis_safety), at least one worker on each queue, the failed
registries' size.
Warnings (no IDLE: mailroom polls; failed jobs waiting; Redis persistence off) do not make the check fail.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from mailroom import preflight, redis_safety
from mailroom.config import GraphMailbox, ImapMailbox, OAuth2Config, Security, Settings
from mailroom.errors import GraphError, ImapAuthError, ImapError, ImapFolderError, TokenError
from mailroom.imap.session import ImapSession


class Outcome(StrEnum):
    OK = "ok"
    FAIL = "fail"
    WARN = "warn"


SYMBOLS = {Outcome.OK: "✓", Outcome.FAIL: "✗", Outcome.WARN: "!"}


@dataclass(frozen=True)
class Result:
    name: str
    outcome: Outcome
    detail: str

    def line(self) -> str:
        return f"{SYMBOLS[self.outcome]} {self.name}: {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "outcome": self.outcome.value, "detail": self.detail}


def _ok(name: str, detail: str) -> Result:
    return Result(name, Outcome.OK, detail)


def _fail(name: str, detail: str) -> Result:
    return Result(name, Outcome.FAIL, detail)


def _warn(name: str, detail: str) -> Result:
    return Result(name, Outcome.WARN, detail)


def check_mailbox(config: ImapMailbox) -> Iterator[Result]:
    prefix = f"{config.name}:"
    where = f"{config.host}:{config.effective_port}"
    try:
        socket.create_connection((config.host, config.effective_port), timeout=config.timeout).close()
    except OSError as exc:
        yield _fail(f"{prefix} tcp", f"{where}: {exc.strerror or exc}")
        return
    yield _ok(f"{prefix} tcp", f"{where} accepts connections")
    tls_name = f"{prefix} tls"
    if config.security is Security.NONE:
        tls_ok = Result(tls_name, Outcome.WARN, "security: none, the password travels in clear text")
    elif config.verify:
        tls_ok = _ok(tls_name, f"{config.security.value}, certificate verified")
    else:
        tls_ok = Result(
            tls_name, Outcome.WARN, f"{config.security.value}, certificate NOT verified (verify: false)"
        )
    try:
        session = ImapSession.open(config)
    except ImapAuthError as exc:
        yield tls_ok
        yield _fail(f"{prefix} login", f"{config.username}: {exc}")
        return
    except ImapFolderError as exc:
        yield tls_ok
        yield _ok(f"{prefix} login", config.username or "-")
        yield _ok(f"{prefix} folder", f"{config.folder} selected")
        yield _fail(f"{prefix} after_delivery", str(exc))
        return
    except ImapError as exc:
        message = str(exc)
        if message.startswith(("connect to", "STARTTLS")):
            yield _fail(tls_name, message)
        else:
            yield tls_ok
            yield _ok(f"{prefix} login", config.username or "-")
            yield _fail(f"{prefix} folder", message)
        return
    try:
        yield tls_ok
        yield _ok(f"{prefix} login", config.username or "-")
        state = session.state
        yield _ok(
            f"{prefix} folder",
            f"{config.folder} selected (UIDVALIDITY {state.uidvalidity}, {state.exists} messages)",
        )
        _, target = config.after_delivery_action
        if target is not None:
            yield _ok(f"{prefix} after_delivery", f"folder {target} exists")
        if session.has_idle:
            yield _ok(f"{prefix} idle", "IDLE offered")
        else:
            yield Result(f"{prefix} idle", Outcome.WARN, f"no IDLE: polling every {config.poll_interval:g} s")
        try:
            waiting = len(session.pending_uids())
        except ImapError as exc:
            yield _fail(f"{prefix} waiting", str(exc))
        else:
            yield _ok(f"{prefix} waiting", f"{waiting} message(s) not yet done")
    finally:
        session.close()


def check_graph_mailbox(config: GraphMailbox) -> Iterator[Result]:
    """The Graph counterpart of ``check_mailbox``: token, folder, waiting, through the watcher's own
    token source and client, so a ✓ here means the watcher's requests succeed too.

    The waiting figure is a full delta listing of the folder filtered by ``GraphClient.is_pending``: what
    the watcher would deliver, as the IMAP probe's SEARCH is (one request per ``page_size`` messages in the
    folder). The delta link it ends with is thrown away (never saved to Redis), so the check changes nothing.
    """
    # Imported here: HTTP and OAuth2 libraries cost an IMAP-only check ~20 MB of RSS for nothing.
    from mailroom.graph.client import GraphClient
    from mailroom.oauth2 import token_source_for

    graph = config.graph
    prefix = f"{config.name}:"
    credentials = graph.client_credentials()
    tokens = token_source_for(
        config.name, OAuth2Config(client_credentials=credentials), timeout=config.timeout
    )
    try:
        tokens.token()  # cached by the source: the client's requests below reuse it
    except TokenError as exc:  # names the endpoint and its error, never the secret
        yield _fail(f"{prefix} token", f"client {graph.client_id}: {exc}")
        return
    yield _ok(f"{prefix} token", f"client {graph.client_id}: granted by {credentials.effective_token_url}")
    client = GraphClient(config, tokens, _throttle_budget(config.timeout))
    try:
        changes = client.changes(None)
    except GraphError as exc:
        yield _fail(f"{prefix} folder", f"{config.folder} of {graph.user} not reachable: {exc}")
        return
    finally:
        client.http.close()
    yield _ok(
        f"{prefix} folder", f"{config.folder} of {graph.user} reachable ({len(changes.messages)} messages)"
    )
    waiting = sum(1 for message in changes.messages if client.is_pending(message))
    yield _ok(f"{prefix} waiting", f"{waiting} message(s) not yet done")


def _throttle_budget(seconds: float) -> Callable[[float], bool]:
    """The client's throttling wait for a check: honour Retry-After while the waits add up to at most
    ``seconds`` (the mailbox's timeout), then stop, so a throttled Graph is a ✗ line, not a hung check."""
    left = seconds

    def wait(delay: float) -> bool:
        nonlocal left
        if delay > left:
            return True  # stop: the client raises GraphError "stopped while throttled"
        left -= delay
        time.sleep(delay)
        return False

    return wait


def check_redis(settings: Settings, connection: redis.Redis) -> Iterator[Result]:
    try:
        connection.ping()
    except RedisError as exc:
        yield _fail("redis", f"{type(exc).__name__}: {exc}")
        return
    yield _ok("redis", "PING answered")
    try:
        yield from check_redis_safety(settings, redis_safety.inspect(connection))
        for name in settings.queues():
            queue = Queue(name, connection=connection, serializer=JSONSerializer)
            workers = Worker.count(queue=queue)
            if workers:
                yield _ok(f"workers:{name}", f"{workers} worker(s) listening, {len(queue)} job(s) waiting")
            else:
                yield _fail(f"workers:{name}", f"no worker listening ({len(queue)} job(s) waiting)")
            failed = queue.failed_job_registry.count
            outcome = Outcome.OK if failed == 0 else Outcome.WARN
            hint = "" if failed == 0 else " (mailroom failed list)"
            yield Result(f"failed:{name}", outcome, f"{failed} failed job(s){hint}")
    except RedisError as exc:
        yield _fail("redis", f"{type(exc).__name__}: {exc}")


def check_redis_safety(settings: Settings, safety: redis_safety.RedisSafety) -> Iterator[Result]:
    """Eviction policy (✗ unless noeviction), persistence (! when off), replicas and the WAIT they get."""
    problem = redis_safety.eviction_problem(safety)
    if problem is not None:
        yield _fail("redis:eviction", problem)
    elif safety.eviction_policy is None:
        yield _warn("redis:eviction", "maxmemory_policy not in INFO memory: make sure it is noeviction")
    else:
        yield _ok("redis:eviction", "maxmemory-policy noeviction: a full Redis refuses writes, drops none")
    problem = redis_safety.persistence_problem(safety)
    if problem is not None:
        yield _warn("redis:persistence", problem)
    elif safety.aof_enabled is None:
        yield _warn("redis:persistence", "aof_enabled not in INFO persistence: make sure AOF is on")
    else:
        fsync = safety.appendfsync or "unknown (CONFIG GET refused): make sure it is everysec or always"
        yield _ok("redis:persistence", f"AOF on, appendfsync {fsync}")
    replicas = safety.connected_replicas
    acks = redis_safety.replica_acks(settings, replicas)
    known = "unknown" if replicas is None else str(replicas)
    detail = f"{known} connected; each enqueue waits for {acks} acknowledgement(s) (WAIT)"
    if acks and replicas is not None and replicas < acks:
        yield _fail("redis:replicas", f"{detail}: fewer replicas than redis_min_replica_acks, enqueues fail")
    elif not acks and replicas:
        yield _warn("redis:replicas", f"{detail}: a failover can lose the last acknowledged jobs")
    else:
        yield _ok("redis:replicas", detail)


def run_checks(settings: Settings, connection: redis.Redis) -> Iterator[Result]:
    problems = preflight.problems(settings)  # what every process checks at start: secrets, handlers
    for problem in problems:
        yield _fail("config", problem)
    if not problems:
        yield _ok("config", f"valid, {len(settings.mailboxes)} mailbox(es)")
    for mailbox in settings.mailboxes:
        if isinstance(mailbox, GraphMailbox):
            yield from check_graph_mailbox(mailbox)
        else:
            yield from check_mailbox(mailbox)
    if any(getattr(mailbox, "webhook", None) is not None for mailbox in settings.mailboxes):
        from mailroom.webhook_check import check_webhooks  # httpx: only when a webhook is configured

        yield from check_webhooks(settings)
    yield from check_redis(settings, connection)
