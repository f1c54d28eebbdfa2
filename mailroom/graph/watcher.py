"""One Graph mailbox, polled for ever: delta since the saved link -> fetch MIME -> sink -> mark -> save.

The same seam as the IMAP watcher: each batch goes to the sink and is marked (read, moved or deleted)
only when the sink returns; if it raises, nothing of the round is marked and the delta link is not
advanced, so the next poll offers the same messages again. Messages are identified by Graph's immutable
id, which the queue's idempotency guard uses (source "graph"), so a replay never makes a second job.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from mailroom import metrics
from mailroom.config import GraphMailbox
from mailroom.errors import EnqueueError, GraphError
from mailroom.graph.client import DeltaExpired, GraphClient
from mailroom.graph.state import DeltaStore
from mailroom.imap.watcher import Backoff, WatcherStatus
from mailroom.source import Sink


class GraphWatcher:
    def __init__(
        self,
        config: GraphMailbox,
        sink: Sink,
        stop: threading.Event,
        client: GraphClient,
        store: DeltaStore,
    ) -> None:
        self.config = config
        self.sink = sink
        self.stop = stop
        self.client = client
        self.store = store
        self.status = WatcherStatus()
        self.log = structlog.get_logger("mailroom.graph").bind(mailbox=config.name)
        self._backoff = Backoff()

    def run(self) -> None:
        """Poll until ``stop`` is set. Never raises."""
        while not self.stop.is_set():
            self.status.turn()
            try:
                self.poll()
            except (GraphError, EnqueueError) as exc:
                self._failed("graph_poll_failed", exc)
                continue
            except Exception as exc:  # the watcher must outlive any bug in a dependency
                self.log.exception("watcher_error", error=str(exc))
                self._failed("watcher_error", exc)
                continue
            self._backoff.reset()
            self.stop.wait(self.config.poll_interval)
        self.log.info("watcher_stopped")

    def _failed(self, event: str, exc: BaseException) -> None:
        self.status.connected = False
        self.status.last_error = str(exc)
        metrics.IMAP_RECONNECTS.labels(self.config.name).inc()
        delay = self._backoff.next_delay()
        self.log.warning(event, error=str(exc), retry_in=round(delay, 2))
        self.stop.wait(delay)

    def poll(self) -> int:
        """One round: deliver everything pending since the saved delta link; return how many."""
        link = self.store.get()
        try:
            changes = self.client.changes(link)
        except DeltaExpired as exc:
            self.log.warning("graph_delta_expired", error=str(exc))
            self.store.clear()
            changes = self.client.changes(None)
        if not self.status.connected:
            self.log.info("graph_connected", user=self.client.graph.user, folder=self.config.folder)
        self.status.connected = True
        self.status.last_error = None
        pending = sorted(
            (m for m in changes.messages if self.client.is_pending(m)),
            key=lambda m: str(m.get("receivedDateTime") or ""),
        )
        for start in range(0, len(pending), self.config.batch_size):
            if self.stop.is_set():
                return start  # the link is not advanced: the rest comes again next time
            self._deliver(pending[start : start + self.config.batch_size])
            self.status.turn()
        self.store.set(changes.delta_link)
        return len(pending)

    def _deliver(self, chunk: list[dict[str, Any]]) -> None:
        batch = [self.client.fetch(m, self.config.max_message_size) for m in chunk]
        metrics.MESSAGES_FETCHED.labels(self.config.name).inc(len(batch))
        self.sink(batch)
        for message in batch:
            self.client.mark_done(message.ref)
        metrics.MESSAGES_MARKED.labels(self.config.name).inc(len(batch))
        self.log.debug("batch_marked", count=len(batch))
