"""The composition root: IMAP session -> parse -> guarded enqueue, one watcher thread per mailbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from mailroom import metrics
from mailroom.config import MailboxConfig, Settings
from mailroom.imap.session import FetchedMessage
from mailroom.imap.watcher import MailboxWatcher, Sink, WatchLimits
from mailroom.keys import AddressTemplate
from mailroom.message import parse_message
from mailroom.queue import MailQueue, connect
from mailroom.schema import JobPayload

log = structlog.get_logger("mailroom")


def to_payload(
    mailbox: str, message: FetchedMessage, template: AddressTemplate, source: str = "imap"
) -> JobPayload:
    """Parse the header (never raises) and build the job payload around the untouched bytes."""
    parsed = parse_message(message.raw, template)
    parse_error = parsed.parse_error
    if message.truncated:
        parse_error = f"message is {message.size} bytes, over max_message_size: only its header was kept"
    received = message.internaldate or datetime.now(UTC)
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    return JobPayload(
        mailbox=mailbox,
        source=source,
        uidvalidity=message.uidvalidity,
        uid=message.uid,
        received_at=received.isoformat(),
        size=message.size,
        truncated=message.truncated,
        message_id=parsed.message_id,
        key=parsed.key,
        key_header=parsed.key_header,
        from_address=parsed.from_address,
        subject=parsed.subject,
        auto_reply=parsed.auto_reply,
        bounce=parsed.bounce,
        parse_error=parse_error,
        raw=message.raw,
    )


def make_sink(mailbox: MailboxConfig, queue: MailQueue) -> Sink:
    """The watcher's sink for one mailbox: parse, enqueue (raises EnqueueError), log one line each."""
    template = AddressTemplate.parse(mailbox.address)
    mlog = log.bind(mailbox=mailbox.name)

    def sink(batch: Sequence[FetchedMessage]) -> None:
        payloads = [to_payload(mailbox.name, message, template) for message in batch]
        started = time.perf_counter()
        results = queue.enqueue_batch(mailbox, payloads)
        metrics.ENQUEUE_SECONDS.labels(mailbox.name).observe(time.perf_counter() - started)
        for result in results:
            payload = result.payload
            event = "message_enqueued" if result.new else "message_already_queued"
            mlog.info(
                event,
                uidvalidity=payload.uidvalidity,
                uid=payload.uid,
                message_id=payload.message_id,
                reply_key=payload.key,
                key_header=payload.key_header,
                job_id=result.job_id,
                auto_reply=payload.auto_reply,
                parse_error=payload.parse_error,
            )
            _count(mailbox.name, result.new, payload)

    return sink


def _count(mailbox: str, new: bool, payload: JobPayload) -> None:
    if not new:
        metrics.MESSAGES_DUPLICATE.labels(mailbox).inc()
        return
    metrics.MESSAGES_ENQUEUED.labels(mailbox).inc()
    if payload.parse_error:
        metrics.PARSE_ERRORS.labels(mailbox).inc()
    if payload.auto_reply or payload.bounce:
        metrics.AUTO_REPLIES.labels(mailbox).inc()
    if payload.truncated:
        metrics.OVERSIZE.labels(mailbox).inc()


@dataclass
class Watchers:
    """The running watcher threads of one process."""

    watchers: list[MailboxWatcher]
    threads: list[threading.Thread]

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)


def start_watchers(settings: Settings, stop: threading.Event, limits: WatchLimits | None = None) -> Watchers:
    queue = MailQueue(connect(settings.redis_url), settings)
    watchers = [
        MailboxWatcher(mailbox, make_sink(mailbox, queue), stop, limits=limits)
        for mailbox in settings.mailboxes
    ]
    threads = [threading.Thread(target=w.run, name=f"watch-{w.config.name}", daemon=True) for w in watchers]
    for thread in threads:
        thread.start()
    return Watchers(watchers, threads)
