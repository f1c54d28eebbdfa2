"""``mailroom check``: is it working? One line per fact, each ok, failed, or a warning.

For every mailbox: TCP, TLS (certificate verified), login, folder selectable, IDLE offered, messages
waiting undone. Then Redis reachable, at least one worker on each queue, the failed registries' size.
Warnings (no IDLE: mailroom polls; failed jobs waiting) do not make the check fail.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from mailroom.config import MailboxConfig, MailboxKind, Security, Settings
from mailroom.errors import ImapAuthError, ImapError
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


def check_mailbox(config: MailboxConfig) -> Iterator[Result]:
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


def check_redis(settings: Settings, connection: redis.Redis) -> Iterator[Result]:
    try:
        connection.ping()
    except RedisError as exc:
        yield _fail("redis", f"{type(exc).__name__}: {exc}")
        return
    yield _ok("redis", "PING answered")
    try:
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


def run_checks(settings: Settings, connection: redis.Redis) -> Iterator[Result]:
    yield _ok("config", f"valid, {len(settings.mailboxes)} mailbox(es)")
    for mailbox in settings.mailboxes:
        if mailbox.kind is MailboxKind.GRAPH:
            yield Result(mailbox.name, Outcome.WARN, "Microsoft Graph mailbox: not checked (IMAP only)")
            continue
        yield from check_mailbox(mailbox)
    yield from check_redis(settings, connection)
