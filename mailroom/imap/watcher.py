"""How an IMAP mailbox connects, waits and fetches: the IMAP side of the source seam (mailroom.source).

connect -> catch up (SEARCH, FETCH in batches) -> bounded IDLE (or a poll when the server has no IDLE)
-> catch up ... The shared loop (source.Watcher) delivers each batch, marks or parks it, and retries.
A chunk whose FETCH fails is bisected (mailroom.poison) so one unreadable message never stalls the
mailbox. This module knows nothing of Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from mailroom import metrics
from mailroom.config import ImapMailbox
from mailroom.errors import FetchFailed, ImapError
from mailroom.imap.session import FolderState, ImapSession
from mailroom.poison import Ledger, MemoryLedger, Suspects
from mailroom.source import Sink, SourceMessage, Watcher
from mailroom.stopping import wakeup_fd

# Writes the failed record of a message the server would not hand over (what could be read of it, the
# server's words): mailroom.queue.MailQueue.record_unreadable behind the composition root.
RecordUnreadable = Callable[[SourceMessage[int], str], None]
_HEADER_LIMIT = 64 * 1024  # bytes of an unreadable message's header kept in its failed record


class _SessionLost(ImapError):
    """The server closed the session while we read what we could of an unreadable message."""

    event = "imap_session_lost"
    reconnect_at_once = True


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


@dataclass(frozen=True)
class WatchLimits:
    max_batch_bytes: int = 16 * 1024 * 1024  # bytes of message bodies per FETCH (and so in memory)
    done_timeout: float = 5.0  # how long the server may take to answer DONE before we call it dead


class ImapSource:
    """One IMAP folder. Across connections it remembers the UIDVALIDITY, the parked UIDs and the
    unreadable-message suspects, all forgotten when the UIDVALIDITY changes."""

    def __init__(
        self,
        config: ImapMailbox,
        stop: threading.Event,
        open_session: Callable[[ImapMailbox], Session] = ImapSession.open,
        limits: WatchLimits | None = None,
        ledger: Ledger | None = None,
        record_unreadable: RecordUnreadable | None = None,
    ) -> None:
        self.config = config
        self.stop = stop
        self.open_session = open_session
        self.limits = limits or WatchLimits()
        self.log = structlog.get_logger("mailroom.watcher").bind(mailbox=config.name)
        self.uidvalidity: int | None = None
        # Parked (oversized) UIDs of the current UIDVALIDITY: a server that cannot keep our keyword would
        # offer them in every SEARCH (with delete or move) and catch-up would never end. Trimmed to what
        # each SEARCH still returns, so it holds only parked messages still in the folder.
        self.parked: set[int] = set()
        # Unreadable messages (mailroom.poison): chunks whose FETCH failed, bisected; failures counted
        # in the ledger; those at max_failures wait here for their failed record (uid -> server's words).
        self.ledger: Ledger = ledger or MemoryLedger()
        self.record_unreadable = record_unreadable
        self.suspects = Suspects()
        self.counted: set[int] = set()  # UIDs with failures in the ledger, forgotten once fetched
        self.to_record: dict[int, str] = {}

    def connect(self) -> ImapConnection:
        session = self.open_session(self.config)
        state = session.state
        if self.uidvalidity not in (None, state.uidvalidity):
            self.log.warning("uidvalidity_changed", old=self.uidvalidity, new=state.uidvalidity)
            self.parked.clear()
            self.suspects.clear()
            self.counted.clear()
            self.to_record.clear()
        self.uidvalidity = state.uidvalidity
        self.log.info(
            "imap_connected", uidvalidity=state.uidvalidity, exists=state.exists, idle=session.has_idle
        )
        return ImapConnection(self, session)


class ImapConnection:
    """One logged-in session with the folder selected."""

    def __init__(self, source: ImapSource, session: Session) -> None:
        self.source = source
        self.config = source.config
        self.session = session
        self.log = source.log
        self.last_catch_up = 0.0

    def pending(self) -> Iterator[list[SourceMessage[int]]]:
        """Every unseen message, in batches; ends after a SEARCH that found nothing new.

        A chunk whose FETCH fails is bisected (mailroom.poison): one suspect group per round, the rest of
        the mailbox in the usual chunks. After a BYE the FetchFailed goes up: the loop reconnects at once.
        """
        source, session = self.source, self.session
        generation = session.state.uidvalidity
        while not source.stop.is_set():
            if source.to_record:
                self._record()
            uids = session.pending_uids()
            if source.parked:
                source.parked.intersection_update(uids)
                uids = [uid for uid in uids if uid not in source.parked]
            skipped = source.ledger.recorded(generation) if uids else set()
            if skipped:
                uids = [uid for uid in uids if uid not in skipped]
            if not uids:
                source.suspects.clear()
                if session.saw_activity():
                    continue  # new mail was announced while we searched: search again, don't IDLE on it
                self.last_catch_up = time.monotonic()
                return
            try:
                group = source.suspects.next_group(set(uids)) if source.suspects else None
                if group is not None:
                    yield from self._fetch(list(group), len(group))
                    if source.counted:
                        self._forget_failures(generation, group)
                    source.suspects.drop(group)
                    suspected = source.suspects.ids()
                    uids = [uid for uid in uids if uid not in suspected and uid not in group]
                if uids:
                    yield from self._fetch(uids, self.config.batch_size)
            except FetchFailed as exc:
                self._fetch_failed(generation, exc)
                if exc.connection_lost:
                    raise

    def _fetch(self, uids: list[int], batch_size: int) -> Iterator[list[SourceMessage[int]]]:
        limits = self.source.limits
        yield from self.session.fetch(uids, batch_size, self.config.max_message_size, limits.max_batch_bytes)

    def _fetch_failed(self, generation: int, exc: FetchFailed) -> None:
        source = self.source
        metrics.FETCH_FAILURES.labels(self.config.name).inc()
        if len(exc.uids) > 1:
            first, last, count = exc.uids[0], exc.uids[-1], len(exc.uids)
            self.log.warning("fetch_failed", first_uid=first, last_uid=last, count=count, error=exc.words)
            source.suspects.failed(exc.uids)
            return
        uid = exc.uids[0]
        failures = source.ledger.count(generation, uid)
        source.counted.add(uid)
        self.log.warning(
            "message_fetch_failed", uidvalidity=generation, uid=uid, failures=failures, error=exc.words
        )
        if failures >= source.ledger.max_failures:
            source.suspects.drop({uid})
            source.to_record[uid] = exc.words
        else:
            source.suspects.failed(exc.uids)

    def _record(self) -> None:
        """Write the failed record of each message that reached max_failures, with what can be read of it."""
        source, session = self.source, self.session
        generation = session.state.uidvalidity
        for uid, words in list(source.to_record.items()):
            message, header_error = session.describe(uid, _HEADER_LIMIT)
            if source.record_unreadable is not None:
                source.record_unreadable(message, words)
            source.ledger.mark_recorded(generation, uid)
            del source.to_record[uid]
            source.counted.discard(uid)
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
        source = self.source
        fetched = [uid for uid in uids if uid in source.counted]
        if fetched:
            source.ledger.forget(generation, fetched)
            source.counted.difference_update(fetched)

    def mark_done(self, refs: Sequence[int]) -> None:
        self.session.mark_done(refs)

    def park(self, refs: Sequence[int]) -> None:
        self.session.park(refs)
        self.source.parked.update(refs)

    def wait(self) -> bool:
        """One IDLE (renewed every keepalive_interval) or poll interval. A quiet keepalive renewal (DONE
        answered, nothing announced) costs no SEARCH: the server reports new mail during IDLE or in DONE's
        answer. A full catch-up still runs every ``idle_timeout``, against a notification never sent."""
        config, stop = self.config, self.source.stop
        if not self.session.has_idle:
            stop.wait(config.poll_interval)
            if not stop.is_set():
                self.session.noop()
            return True
        wait = min(config.idle_timeout, config.keepalive_interval or config.idle_timeout)
        news = self.session.idle(wait, stop.is_set, self.source.limits.done_timeout, wakeup_fd(stop))
        if news:
            metrics.IDLE_WAKEUPS.labels(config.name).inc()
        return news or time.monotonic() - self.last_catch_up >= config.idle_timeout

    def close(self) -> None:
        self.session.close()


def imap_watcher(
    config: ImapMailbox,
    sink: Sink,
    stop: threading.Event,
    open_session: Callable[[ImapMailbox], Session] = ImapSession.open,
    limits: WatchLimits | None = None,
    ledger: Ledger | None = None,
    record_unreadable: RecordUnreadable | None = None,
) -> Watcher[int]:
    """The shared delivery loop over one IMAP folder."""
    source = ImapSource(config, stop, open_session, limits, ledger, record_unreadable)
    return Watcher(config, sink, stop, source)
