"""One mailbox, watched for ever: connect -> catch up -> bounded IDLE (or poll) -> catch up ...

The watcher knows nothing of Redis. It hands each fetched batch to a sink and marks the batch done on the
server only when the sink returns; if the sink raises, the batch stays unmarked and is offered again.
It never dies on a runtime error: it logs, backs off (exponential, with jitter) and reconnects.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from mailroom import metrics
from mailroom.config import ImapMailbox
from mailroom.errors import EnqueueError, ImapAuthError, ImapError, ImapFolderError
from mailroom.imap.session import FolderState, ImapSession
from mailroom.source import Sink, SourceMessage


class Session(Protocol):
    """What the watcher needs of an IMAP session (ImapSession, or a fake in unit tests)."""

    state: FolderState

    @property
    def has_idle(self) -> bool: ...
    def pending_uids(self) -> list[int]: ...
    def saw_activity(self) -> bool: ...
    def fetch(
        self, uids: Sequence[int], batch_size: int, max_size: int, max_batch_bytes: int
    ) -> Iterator[list[SourceMessage[int]]]: ...
    def mark_done(self, uids: Sequence[int]) -> None: ...
    def park(self, uids: Sequence[int]) -> None: ...
    def idle(self, seconds: float, should_stop: Callable[[], bool], done_timeout: float) -> bool: ...
    def noop(self) -> bool: ...
    def close(self) -> None: ...


@dataclass
class Backoff:
    """Exponential backoff with jitter: 1, 2, 4 ... capped, each scaled by a random 0.5-1.0."""

    base: float = 1.0
    cap: float = 60.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay: float = min(self.cap, self.base * 2.0**self.attempt) * random.uniform(0.5, 1.0)  # noqa: S311
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class WatcherStatus:
    """Read by the health endpoints; written only by the watcher thread."""

    connected: bool = False
    last_turn: float = field(default_factory=time.monotonic)
    last_error: str | None = None
    uidvalidity: int | None = None

    def turn(self) -> None:
        self.last_turn = time.monotonic()


@dataclass(frozen=True)
class WatchLimits:
    max_batch_bytes: int = 16 * 1024 * 1024  # bytes of message bodies per FETCH (and so in memory)
    done_timeout: float = 5.0  # how long the server may take to answer DONE before we call it dead


class MailboxWatcher:
    def __init__(
        self,
        config: ImapMailbox,
        sink: Sink,
        stop: threading.Event,
        open_session: Callable[[ImapMailbox], Session] = ImapSession.open,
        limits: WatchLimits | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.stop = stop
        self.open_session = open_session
        self.limits = limits or WatchLimits()
        self.status = WatcherStatus()
        self.log = structlog.get_logger("mailroom.watcher").bind(mailbox=config.name)
        self._backoff = Backoff()
        # Parked (oversized) UIDs of the current UIDVALIDITY: a server that cannot keep our keyword would
        # offer them in every SEARCH (with delete or move) and catch-up would never end. Trimmed to what
        # each SEARCH still returns, so it holds only parked messages still in the folder.
        self._parked: set[int] = set()

    def run(self) -> None:
        """Watch until ``stop`` is set. Never raises."""
        while not self.stop.is_set():
            self.status.turn()
            session: Session | None = None
            try:
                session = self.open_session(self.config)
                self._on_connected(session)
                self._serve(session)
            except ImapAuthError as exc:
                self._failed("imap_login_failed", exc)
            except ImapFolderError as exc:
                self._failed("after_delivery_folder_missing", exc)
            except ImapError as exc:
                self._failed("imap_connection_failed", exc)
            except Exception as exc:  # the watcher must outlive any bug in a dependency
                self.log.exception("watcher_error", error=str(exc))
                self._failed("watcher_error", exc)
            finally:
                self.status.connected = False
                if session is not None:
                    session.close()
        self.log.info("watcher_stopped")

    def _on_connected(self, session: Session) -> None:
        state = session.state
        if self.status.uidvalidity not in (None, state.uidvalidity):
            self.log.warning("uidvalidity_changed", old=self.status.uidvalidity, new=state.uidvalidity)
            self._parked.clear()
        self.status.uidvalidity = state.uidvalidity
        self.status.connected = True
        self.status.last_error = None
        self.log.info(
            "imap_connected", uidvalidity=state.uidvalidity, exists=state.exists, idle=session.has_idle
        )

    def _failed(self, event: str, exc: BaseException) -> None:
        self.status.connected = False
        self.status.last_error = str(exc)
        metrics.IMAP_RECONNECTS.labels(self.config.name).inc()
        delay = self._backoff.next_delay()
        self.log.warning(event, error=str(exc), retry_in=round(delay, 2))
        self.stop.wait(delay)

    def _serve(self, session: Session) -> None:
        """Catch up, then wait for news; catch up again when the server announces mail.

        A quiet keepalive renewal (DONE answered, nothing announced) costs no SEARCH: the server reports
        new mail during IDLE or in DONE's answer. A full catch-up still runs every ``idle_timeout`` as a
        safety net against a notification the server never sent.
        """
        pending = True
        last_catch_up = 0.0
        while not self.stop.is_set():
            self.status.turn()
            if pending or time.monotonic() - last_catch_up >= self.config.idle_timeout:
                try:
                    self.catch_up(session)
                except EnqueueError as exc:
                    # Redis is down: nothing was marked. Keep the IMAP session and try again later.
                    self._failed("enqueue_failed", exc)
                    continue
                last_catch_up = time.monotonic()
                self._backoff.reset()
                self.status.connected = True  # again, after an enqueue failure (a Redis outage)
                self.status.last_error = None
            if self.stop.is_set():
                return
            if session.has_idle:
                wait = min(
                    self.config.idle_timeout, self.config.keepalive_interval or self.config.idle_timeout
                )
                pending = session.idle(wait, self.stop.is_set, self.limits.done_timeout)
                if pending:
                    metrics.IDLE_WAKEUPS.labels(self.config.name).inc()
            else:
                self.stop.wait(self.config.poll_interval)
                if not self.stop.is_set():
                    session.noop()
                pending = True

    def catch_up(self, session: Session) -> None:
        """Deliver every pending message; return after a SEARCH that found nothing new.

        Stops between batches when asked to, so the message in hand is finished but no new one started.
        """
        while not self.stop.is_set():
            uids = session.pending_uids()
            if self._parked:
                self._parked.intersection_update(uids)
                uids = [uid for uid in uids if uid not in self._parked]
            if not uids:
                if session.saw_activity():
                    continue  # new mail was announced while we searched: search again, don't IDLE on it
                return
            batches = session.fetch(
                uids, self.config.batch_size, self.config.max_message_size, self.limits.max_batch_bytes
            )
            for batch in batches:
                self._deliver(session, batch)
                if self.stop.is_set():
                    return

    def _deliver(self, session: Session, batch: list[SourceMessage[int]]) -> None:
        if not batch:
            return
        metrics.MESSAGES_FETCHED.labels(self.config.name).inc(len(batch))
        self.sink(batch)
        uids = [m.ref for m in batch if not m.truncated]
        session.mark_done(uids)
        # Too large to queue whole: the job has the header only, so the message itself must stay.
        parked = [m.ref for m in batch if m.truncated]
        session.park(parked)
        self._parked.update(parked)
        metrics.MESSAGES_MARKED.labels(self.config.name).inc(len(batch))
        self.log.debug("batch_marked", count=len(batch), first_uid=batch[0].ref, last_uid=batch[-1].ref)


def describe(status: WatcherStatus) -> dict[str, Any]:
    return {
        "connected": status.connected,
        "seconds_since_turn": round(time.monotonic() - status.last_turn, 1),
        "last_error": status.last_error,
        "uidvalidity": status.uidvalidity,
    }
