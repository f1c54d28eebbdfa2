"""The RQ entry point. The watcher enqueues ``workers.jobs.handle_email`` by name with one JSON argument.

A handler's exception is retried with the mailbox's RQ Retry delays, except PermanentHandlerError (and
payloads that cannot be handled at all), which go straight to the failed registry with the raw message.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any, NoReturn

import structlog
from rq import get_current_job
from rq.job import Job

from mailroom import sentry
from mailroom.config import Settings, load_settings
from mailroom.schema import JobPayload, PayloadError
from workers import aio
from workers.errors import PermanentHandlerError, RejectMessage
from workers.incoming import IncomingEmail
from workers.registry import Handler, HandlerNotFound, handler_for
from workers.rejections import reject

log = structlog.get_logger("mailroom.worker")


_given: Settings | None = None


@cache
def settings() -> Settings:
    """The worker process's configuration: what ``preload`` was given (``mailroom worker``), else
    $MAILROOM_CONFIG and MAILROOM_* variables read once (a plain ``rq worker``)."""
    return _given if _given is not None else load_settings()


def configure(given: Settings | None) -> None:
    """Use ``given`` (None: the environment again) from now on."""
    global _given
    _given = given
    settings.cache_clear()
    _handler.cache_clear()


@cache
def _handler(mailbox: str) -> Handler:
    return handler_for(settings().mailbox(mailbox))


def preload(given: Settings | None = None) -> None:
    """Take ``given`` as the settings, then import and configure everything a job needs, once, in the
    worker's main process.

    RQ forks a work horse per job; what the parent has loaded the horse inherits, so a job no longer pays
    for reading the config, importing its handler and (for the webhook) the JWT library. A handler that
    cannot be imported is left to fail its jobs with the reason.
    """
    if given is not None:
        configure(given)
    for mailbox in settings().mailboxes:
        try:
            _handler(mailbox.name)
        except HandlerNotFound:
            log.warning("handler_not_importable", mailbox=mailbox.name, handler=mailbox.handler)


def handle_email(data: dict[str, Any]) -> dict[str, Any]:
    try:
        payload = JobPayload.from_json(data)
    except PayloadError as exc:
        _no_retry()
        raise PermanentHandlerError(f"not a mailroom payload: {exc}") from exc
    email = IncomingEmail(payload)
    job = get_current_job()
    sentry.tag_message(payload.mailbox, payload.key, payload.message_id)
    jlog = log.bind(
        mailbox=payload.mailbox,
        uid=payload.uid,
        message_id=payload.message_id,
        reply_key=payload.key,
        job_id=job.id if job else None,
    )
    if (payload.auto_reply or payload.bounce) and _skips_auto_replies(payload.mailbox):
        jlog.info("email_skipped", reason="bounce" if payload.bounce else "auto_reply")
        _drop_raw(job, data)
        return {"handled": False, "skipped": "auto_reply"}
    if payload.truncated:
        reject(settings(), payload, "too_large")
        _permanent(f"message too large ({payload.size} bytes): parked with its header only")
    if payload.key is None and _rejects_keyless():
        # Only when configured: a keyless message is answered and parked instead of handled.
        reject(settings(), payload, "no_key")
        _permanent("rejected: no reply key found in the message")
    try:
        handler = _handler(payload.mailbox)
    except (KeyError, HandlerNotFound) as exc:
        _permanent(f"no handler for mailbox {payload.mailbox!r}: {exc}")
    try:
        result = handler(email)
        if inspect.isawaitable(result):  # an ``async def`` handler
            result = aio.run(result)
    except RejectMessage as exc:
        jlog.warning("handler_rejected", reason=exc.reason)
        reject(settings(), payload, exc.reason, exc.detail)
        _no_retry()
        raise
    except PermanentHandlerError as exc:
        jlog.warning("handler_failed_permanently", error=str(exc))
        _no_retry()
        raise
    except Exception as exc:
        jlog.warning("handler_failed", error=f"{type(exc).__name__}: {exc}")
        raise
    jlog.info("email_handled", handler=settings().mailbox(payload.mailbox).handler)
    _drop_raw(job, data)
    return {"handled": True, "result": result if isinstance(result, (str, int, float, bool)) else None}


def _drop_raw(job: Job | None, data: dict[str, Any]) -> None:
    """The job succeeded: unless ``keep_handled_raw``, the finished job RQ saves next (kept for result_ttl)
    holds the payload without the message bytes (``raw`` empty). A failed job keeps them."""
    if job is not None and not settings().keep_handled_raw:
        job.args = ({**data, "raw": ""}, *job.args[1:])


def _skips_auto_replies(mailbox: str) -> bool:
    try:
        return settings().mailbox(mailbox).auto_replies == "skip"
    except KeyError:
        return True  # no such mailbox (an injected message?): never answer an auto-reply


def _rejects_keyless() -> bool:
    rejections = settings().rejections
    return rejections.enabled and "no_key" in rejections.reasons


def _no_retry() -> None:
    job = get_current_job()
    if job is not None:
        job.retries_left = 0


def _permanent(reason: str) -> NoReturn:
    _no_retry()
    raise PermanentHandlerError(reason)
