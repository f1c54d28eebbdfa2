"""The seam every mail source implements, and the one loop that delivers what any source fetches.

A *source* (an IMAP folder, a Microsoft Graph mailbox, ...) knows how to connect, how to wait for news
and how to fetch: it implements :class:`Source` and :class:`Connection`. Everything else lives here,
once, for every source, in :class:`Watcher`:

- each fetched batch goes to the :class:`Sink` (which enqueues it) and only when the sink returns is the
  batch marked done on the server; if the sink raises, nothing of the batch is marked;
- a message over ``max_message_size`` (``truncated``: its job holds only the header) is *parked*, never
  marked done, so ``after_delivery: delete`` cannot destroy the only whole copy;
- an error is logged, counted and retried after an exponential backoff, the connection kept across an
  enqueue failure (Redis away) and reopened after any other; the loop never dies;
- the watcher's status (connected, last turn, last error) for the health endpoints, and the metrics.

Nothing here knows Redis, IMAP or HTTP; docs/sources.md shows how to add a source.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import structlog

from mailroom import metrics
from mailroom.config import MailboxConfig, MailboxKind
from mailroom.errors import EnqueueError, MailroomError

# A reconnect an error asks for at once (reconnect_at_once: IMAP after a BYE while bisecting unreadable
# mail, mailroom.poison) waits only this long, unless this many in a row delivered nothing.
QUICK_RECONNECTS = 20
QUICK_DELAY = 0.05

# A source's own id for a message (an IMAP UID, a Graph immutable id): what it marks the message by.
Ref = TypeVar("Ref", int, str)


@dataclass(frozen=True, slots=True)
class SourceMessage(Generic[Ref]):
    """One message as its source holds it. ``raw`` is the whole message, or only its header when
    ``truncated`` (larger than max_message_size; ``size`` is then the whole message's size)."""

    kind: MailboxKind
    ref: Ref
    raw: bytes
    size: int
    received_at: datetime | None  # when the server received it (IMAP INTERNALDATE, Graph receivedDateTime)
    truncated: bool = False
    # Where refs are reused (IMAP: UIDs are unique only within one UIDVALIDITY), the era the ref belongs
    # to; None for sources whose refs are never reused.
    epoch: int | None = None


class Sink(Protocol):
    """Takes a batch and returns when every message of it is safely queued; raises EnqueueError if not."""

    def __call__(self, batch: Sequence[SourceMessage[Any]], /) -> None: ...


class Connection(Protocol[Ref]):
    """One open connection to a mailbox (or, for an HTTP API, one session of polling it)."""

    def pending(self) -> Iterator[Sequence[SourceMessage[Ref]]]:
        """Every message waiting now, in batches; ends when none is left. The watcher stops iterating
        when asked to stop or when a batch fails, so code after the last ``yield`` (Graph: save the delta
        link) runs only once every batch was delivered and marked."""
        ...

    def mark_done(self, refs: Sequence[Ref]) -> None:
        """Apply after_delivery (seen, delete, move) to these messages, which are safely queued."""
        ...

    def park(self, refs: Sequence[Ref]) -> None:
        """Leave these messages (queued with their header only) on the server, and offer them no more."""
        ...

    def wait(self) -> bool:
        """Wait a bounded time for news (IDLE, a poll interval); True when ``pending`` is due again."""
        ...

    def close(self) -> None: ...


class Source(Protocol[Ref]):
    """How one kind of mailbox is reached. ``connect`` raises a MailroomError when it cannot be."""

    def connect(self) -> Connection[Ref]: ...


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

    def turn(self) -> None:
        self.last_turn = time.monotonic()


class Watcher(Generic[Ref]):
    """One mailbox, for ever: connect -> deliver everything pending -> wait for news -> deliver ...

    The same loop for every source; the source only connects, waits and fetches.
    """

    def __init__(self, config: MailboxConfig, sink: Sink, stop: threading.Event, source: Source[Ref]) -> None:
        self.config = config
        self.sink = sink
        self.stop = stop
        self.source: Source[Ref] = source
        self.status = WatcherStatus()
        self.backoff = Backoff()
        self.log = structlog.get_logger("mailroom.watcher").bind(mailbox=config.name)
        self._labels = (config.name,)
        self._fruitless = 0  # reconnects at once in a row with nothing delivered
        self._retries = metrics.SOURCE_RETRIES.labels(config.name, config.kind)
        legacy = metrics.LEGACY_RETRIES.get(config.kind)  # mailroom_imap_reconnects_total, for dashboards
        self._legacy_retries = legacy.labels(config.name) if legacy is not None else None

    def run(self) -> None:
        """Watch until ``stop`` is set. Never raises."""
        while not self.stop.is_set():
            self.status.turn()
            connection: Connection[Ref] | None = None
            try:
                connection = self.source.connect()
                self.status.connected = True
                self.status.last_error = None
                self._serve(connection)
            except MailroomError as exc:
                if exc.reconnect_at_once:
                    self._reconnect_at_once(exc)
                else:
                    self.failed(exc)
            except Exception as exc:  # the watcher must outlive any bug in a dependency
                self.log.exception("watcher_error", error=str(exc))
                self.failed(exc)
            finally:
                self.status.connected = False
                if connection is not None:
                    connection.close()
        self.log.info("watcher_stopped")

    def _serve(self, connection: Connection[Ref]) -> None:
        due = True
        while not self.stop.is_set():
            self.status.turn()
            if due:
                try:
                    self.catch_up(connection)
                except EnqueueError as exc:
                    # Redis is away: nothing of the batch was marked. Keep the connection, try again.
                    self.failed(exc)
                    continue
                self.backoff.reset()
                self.status.connected = True  # again, after an enqueue failure (a Redis outage)
                self.status.last_error = None
            if self.stop.is_set():
                return
            due = connection.wait()

    def catch_up(self, connection: Connection[Ref]) -> None:
        """Deliver every pending batch. Stops between batches when asked to: the batch in hand is
        finished (queued and marked), no new one is started."""
        for batch in connection.pending():
            self.deliver(connection, batch)
            if self.stop.is_set():
                return

    def deliver(self, connection: Connection[Ref], batch: Sequence[SourceMessage[Ref]]) -> None:
        """Queue the batch, then mark it done; a truncated message is parked instead (its job has only the
        header, so the message itself must stay). If the sink raises, nothing is marked."""
        if not batch:
            return
        metrics.MESSAGES_FETCHED.labels(*self._labels).inc(len(batch))
        self.sink(batch)
        self._fruitless = 0
        done = [m.ref for m in batch if not m.truncated]
        if done:
            connection.mark_done(done)
        parked = [m.ref for m in batch if m.truncated]
        if parked:
            connection.park(parked)
        metrics.MESSAGES_MARKED.labels(*self._labels).inc(len(batch))
        self.status.turn()  # a delivered batch is progress: a long catch-up keeps liveness fresh
        self.log.debug("batch_marked", count=len(batch), parked=len(parked))

    def _reconnect_at_once(self, exc: MailroomError) -> None:
        self.status.connected = False
        self._fruitless += 1
        if self._fruitless > QUICK_RECONNECTS:
            self.failed(exc)  # the server itself is in trouble: back off
            return
        self.log.info(exc.event, error=str(exc))
        self.stop.wait(QUICK_DELAY)

    def failed(self, exc: BaseException) -> None:
        """Record, count and log a failure, then wait out the backoff (or until stopped)."""
        self.status.connected = False
        self.status.last_error = str(exc)
        self._retries.inc()
        if self._legacy_retries is not None:
            self._legacy_retries.inc()
        delay = self.backoff.next_delay()
        event = exc.event if isinstance(exc, MailroomError) else "watcher_error"
        self.log.warning(event, error=str(exc), retry_in=round(delay, 2))
        self.stop.wait(delay)
