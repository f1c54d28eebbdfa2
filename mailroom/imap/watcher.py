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
from mailroom.errors import EnqueueError, FetchFailed, ImapAuthError, ImapError, ImapFolderError
from mailroom.imap.session import FolderState, ImapSession
from mailroom.poison import Ledger, MemoryLedger, Suspects
from mailroom.source import Sink, SourceMessage
from mailroom.stopping import wakeup_fd

# Writes the failed record of a message the server would not hand over (what could be read of it, the
# server's words): mailroom.queue.MailQueue.record_unreadable behind the composition root.
RecordUnreadable = Callable[[SourceMessage[int], str], None]
# A reconnect after a FETCH the server ended with BYE is part of finding the unreadable message: no backoff,
# unless this many of them in a row delivered nothing (then the server itself is in trouble).
_QUICK_RECONNECTS = 20
_QUICK_DELAY = 0.05
_HEADER_LIMIT = 64 * 1024  # bytes of an unreadable message's header kept in its failed record


class _SessionLost(ImapError):
    """The server closed the session while we read what we could of an unreadable message."""


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
    def describe(self, uid: int, header_limit: int) -> tuple[SourceMessage[int], str | None]: ...
    def idle(
        self, seconds: float, should_stop: Callable[[], bool], done_timeout: float, wakeup: int | None = None
    ) -> bool: ...
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
        ledger: Ledger | None = None,
        record_unreadable: RecordUnreadable | None = None,
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
        # Unreadable messages (mailroom.poison): chunks whose FETCH failed, bisected; failures counted
        # in the ledger; those at max_failures wait here for their failed record (uid -> server's words).
        self.ledger: Ledger = ledger or MemoryLedger()
        self.record_unreadable = record_unreadable
        self._suspects = Suspects()
        self._counted: set[int] = set()  # UIDs with failures in the ledger, forgotten once fetched
        self._to_record: dict[int, str] = {}
        self._fruitless = 0  # quick reconnects in a row with nothing delivered

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
            except (FetchFailed, _SessionLost) as exc:
                self._session_lost(exc)
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
            self._suspects.clear()
            self._counted.clear()
            self._to_record.clear()
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

    def _session_lost(self, exc: ImapError) -> None:
        """The server ended the session over an unreadable message: reconnect at once, as bisecting
        needs (each round narrows it down), unless many such rounds in a row delivered nothing."""
        self.status.connected = False
        self._fruitless += 1
        if self._fruitless > _QUICK_RECONNECTS:
            self._failed("imap_session_lost", exc)
            return
        self.log.info("imap_session_lost", error=str(exc))
        self.stop.wait(_QUICK_DELAY)

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
                pending = session.idle(wait, self.stop.is_set, self.limits.done_timeout, wakeup_fd(self.stop))
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
        A chunk whose FETCH fails is bisected (mailroom.poison): one suspect group per round, the rest
        of the mailbox in the usual chunks.
        """
        generation = session.state.uidvalidity
        while not self.stop.is_set():
            if self._to_record:
                self._record(session)
            uids = session.pending_uids()
            if self._parked:
                self._parked.intersection_update(uids)
                uids = [uid for uid in uids if uid not in self._parked]
            skipped = self.ledger.recorded(generation) if uids else set()
            if skipped:
                uids = [uid for uid in uids if uid not in skipped]
            if not uids:
                self._suspects.clear()
                if session.saw_activity():
                    continue  # new mail was announced while we searched: search again, don't IDLE on it
                return
            try:
                group = self._suspects.next_group(set(uids)) if self._suspects else None
                if group is not None:
                    self._fetch_and_deliver(session, list(group), len(group))
                    if self._counted:
                        self._forget_failures(generation, group)
                    self._suspects.drop(group)
                    if self.stop.is_set():
                        return
                    suspected = self._suspects.ids()
                    uids = [uid for uid in uids if uid not in suspected and uid not in group]
                if uids:
                    self._fetch_and_deliver(session, uids, self.config.batch_size)
            except FetchFailed as exc:
                self._fetch_failed(generation, exc)
                if exc.connection_lost:
                    raise

    def _fetch_and_deliver(self, session: Session, uids: list[int], batch_size: int) -> None:
        batches = session.fetch(uids, batch_size, self.config.max_message_size, self.limits.max_batch_bytes)
        for batch in batches:
            self._deliver(session, batch)
            if self.stop.is_set():
                return

    def _fetch_failed(self, generation: int, exc: FetchFailed) -> None:
        metrics.FETCH_FAILURES.labels(self.config.name).inc()
        if len(exc.uids) > 1:
            first, last, count = exc.uids[0], exc.uids[-1], len(exc.uids)
            self.log.warning("fetch_failed", first_uid=first, last_uid=last, count=count, error=exc.words)
            self._suspects.failed(exc.uids)
            return
        uid = exc.uids[0]
        failures = self.ledger.count(generation, uid)
        self._counted.add(uid)
        self.log.warning(
            "message_fetch_failed", uidvalidity=generation, uid=uid, failures=failures, error=exc.words
        )
        if failures >= self.ledger.max_failures:
            self._suspects.drop({uid})
            self._to_record[uid] = exc.words
        else:
            self._suspects.failed(exc.uids)

    def _record(self, session: Session) -> None:
        """Write the failed record of each message that reached max_failures, with what can be read of it."""
        generation = session.state.uidvalidity
        for uid, words in list(self._to_record.items()):
            message, header_error = session.describe(uid, _HEADER_LIMIT)
            if self.record_unreadable is not None:
                self.record_unreadable(message, words)
            self.ledger.mark_recorded(generation, uid)
            del self._to_record[uid]
            self._counted.discard(uid)
            metrics.UNREADABLE.labels(self.config.name).inc()
            self.log.error(
                "message_unreadable",
                uidvalidity=generation,
                uid=uid,
                size=message.size,
                header=header_error is None,
                error=words,
            )
            if header_error is not None and header_error.upper().startswith("BYE"):
                raise _SessionLost(f"the server ended the session reading UID {uid}'s header: {header_error}")

    def _forget_failures(self, generation: int, uids: Sequence[int]) -> None:
        fetched = [uid for uid in uids if uid in self._counted]
        if fetched:
            self.ledger.forget(generation, fetched)
            self._counted.difference_update(fetched)

    def _deliver(self, session: Session, batch: list[SourceMessage[int]]) -> None:
        if not batch:
            return
        metrics.MESSAGES_FETCHED.labels(self.config.name).inc(len(batch))
        self.sink(batch)
        self._fruitless = 0
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
