"""How a Graph mailbox connects, waits and fetches: the Graph side of the source seam (mailroom.source).

Each round lists the changes since the saved delta link, fetches the pending messages' MIME in batches
for the shared loop (source.Watcher) to deliver and mark, and saves the new delta link only after every
batch of the round was delivered: if a batch fails or the watcher stops, the link is not advanced and the
next round offers the same messages again. Messages are identified by Graph's immutable id, which the
queue's idempotency guard uses, so a replay never makes a second job.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import structlog

from mailroom.config import GraphMailbox
from mailroom.graph.client import DeltaExpired, GraphClient
from mailroom.graph.state import DeltaStore
from mailroom.source import Sink, SourceMessage, Watcher


class GraphSource:
    """One Graph mailbox folder. Parked messages are left as they are (unread, in place) and, as the
    delta link moves past them, offered no more; a full resync offers them again, and the guard then
    keeps them from a second job."""

    def __init__(
        self, config: GraphMailbox, stop: threading.Event, client: GraphClient, store: DeltaStore
    ) -> None:
        self.config = config
        self.stop = stop
        self.client = client
        self.store = store
        self.log = structlog.get_logger("mailroom.graph").bind(mailbox=config.name)
        self.parked: set[str] = set()

    def connect(self) -> GraphConnection:
        self.client.authenticate()
        self.log.info("graph_connected", user=self.config.graph.user, folder=self.config.folder)
        return GraphConnection(self)


class GraphConnection:
    def __init__(self, source: GraphSource) -> None:
        self.source = source
        self.client = source.client

    def pending(self) -> Iterator[list[SourceMessage[str]]]:
        """One round: the messages pending since the saved delta link, then the new link is saved."""
        source, config = self.source, self.source.config
        link = source.store.get()
        try:
            changes = self.client.changes(link)
        except DeltaExpired as exc:
            source.log.warning("graph_delta_expired", error=str(exc))
            source.store.clear()
            changes = self.client.changes(None)
        pending = sorted(
            (m for m in changes.messages if self.client.is_pending(m) and m["id"] not in source.parked),
            key=lambda m: str(m.get("receivedDateTime") or ""),
        )
        for start in range(0, len(pending), config.batch_size):
            chunk = pending[start : start + config.batch_size]
            yield [self.client.fetch(m, config.max_message_size) for m in chunk]
        source.store.set(changes.delta_link)

    def mark_done(self, refs: Sequence[str]) -> None:
        for ref in refs:
            self.client.mark_done(ref)

    def park(self, refs: Sequence[str]) -> None:
        self.source.parked.update(refs)

    def wait(self) -> bool:
        self.source.stop.wait(self.source.config.poll_interval)
        return True

    def close(self) -> None:
        pass


def graph_watcher(
    config: GraphMailbox, sink: Sink, stop: threading.Event, client: GraphClient, store: DeltaStore
) -> Watcher[str]:
    """The shared delivery loop over one Graph mailbox."""
    return Watcher(config, sink, stop, GraphSource(config, stop, client, store))
