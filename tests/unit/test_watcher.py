"""Watcher logic against a fake session that implements the same Protocol (the real thing is tested
against Dovecot in tests/integration)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from mailroom.config import ImapMailbox, MailboxKind
from mailroom.errors import EnqueueError, ImapError
from mailroom.imap.session import FolderState
from mailroom.imap.watcher import ImapConnection, ImapSource, imap_watcher
from mailroom.source import Backoff, SourceMessage, Watcher

CONFIG = ImapMailbox(
    name="support", host="127.0.0.1", security="none", username="u", password="p", batch_size=2
)


def _message(uid: int, raw: bytes, size: int, truncated: bool = False) -> SourceMessage[int]:
    return SourceMessage(MailboxKind.IMAP, uid, raw, size, None, truncated, epoch=7)


@dataclass
class FakeSession:
    """A mailbox of UIDs; ``arrivals`` are delivered to the mailbox as a side effect of the n-th SEARCH."""

    messages: dict[int, bytes]
    arrivals: dict[int, dict[int, bytes]] = field(default_factory=dict)
    marked: list[int] = field(default_factory=list)
    parked: list[int] = field(default_factory=list)
    searches: int = 0
    idles: int = 0
    announced: bool = False
    state: FolderState = field(default_factory=lambda: FolderState(uidvalidity=7, uidnext=None, exists=0))
    has_idle: bool = True

    def pending_uids(self) -> list[int]:
        self.searches += 1
        result = sorted(uid for uid in self.messages if uid not in self.marked)
        if self.searches in self.arrivals:  # arrives during this SEARCH: not in its result, but announced
            self.messages.update(self.arrivals[self.searches])
            self.announced = True
        return result

    def saw_activity(self) -> bool:
        announced, self.announced = self.announced, False
        return announced

    def fetch(
        self, uids: Sequence[int], batch_size: int, max_size: int, max_batch_bytes: int
    ) -> Iterator[list[SourceMessage[int]]]:
        for uid in uids:
            yield [_message(uid, self.messages[uid], len(self.messages[uid]))]

    def mark_done(self, uids: Sequence[int]) -> None:
        self.marked.extend(uids)

    def park(self, uids: Sequence[int]) -> None:
        self.parked.extend(uids)

    def idle(
        self, seconds: float, should_stop: Callable[[], bool], done_timeout: float, wakeup: int | None = None
    ) -> bool:
        self.idles += 1
        return False

    def noop(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _watcher(sink, stop=None, open_session=None) -> Watcher[int]:
    return imap_watcher(
        CONFIG, sink, stop or threading.Event(), open_session=open_session or (lambda c: None)
    )


def _catch_up(watcher: Watcher[int], session: FakeSession) -> None:
    source = watcher.source
    assert isinstance(source, ImapSource)
    watcher.catch_up(ImapConnection(source, session))


def test_marks_each_batch_only_after_the_sink_returned():
    session = FakeSession({1: b"a", 2: b"b", 3: b"c"})
    seen_marked_at_sink_time = []

    def sink(batch):
        seen_marked_at_sink_time.append(list(session.marked))

    _catch_up(_watcher(sink), session)
    assert session.marked == [1, 2, 3]
    assert seen_marked_at_sink_time == [[], [1], [1, 2]]


def test_a_failing_sink_leaves_the_batch_unmarked():
    session = FakeSession({1: b"a", 2: b"b"})

    def sink(batch):
        raise EnqueueError("redis down")

    with pytest.raises(EnqueueError):
        _catch_up(_watcher(sink), session)
    assert session.marked == []


def test_mail_announced_during_the_last_search_is_fetched_before_idling():
    session = FakeSession({1: b"a"}, arrivals={2: {2: b"late"}})
    delivered = []
    _catch_up(_watcher(lambda batch: delivered.extend(m.ref for m in batch)), session)
    assert delivered == [1, 2]
    assert session.idles == 0


def test_stop_finishes_the_batch_in_hand_and_starts_no_other():
    session = FakeSession({1: b"a", 2: b"b", 3: b"c"})
    stop = threading.Event()

    def sink(batch):
        stop.set()

    _catch_up(_watcher(sink, stop), session)
    assert session.marked == [1]


def test_run_survives_connection_errors_and_bugs_then_delivers():
    stop = threading.Event()
    session = FakeSession({1: b"a"})
    attempts = []

    def open_session(config):
        attempts.append(1)
        if len(attempts) == 1:
            raise ImapError("connection refused")
        if len(attempts) == 2:
            raise RuntimeError("a bug in a dependency")
        return session

    def sink(batch):
        stop.set()

    watcher = _watcher(sink, stop, open_session)
    watcher.backoff = Backoff(base=0.001, cap=0.001)
    watcher.run()
    assert len(attempts) == 3 and session.marked == [1]
    assert watcher.status.last_error is None


def test_backoff_grows_to_its_cap_with_jitter():
    backoff = Backoff(base=1, cap=8)
    delays = [backoff.next_delay() for _ in range(6)]
    assert all(0.5 * min(8, 2**i) <= d <= min(8, 2**i) for i, d in enumerate(delays))
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_quiet_keepalive_renewals_cost_no_search():
    """IDLE renewed every keepalive_interval: a renewal with no news goes straight back to IDLE."""
    stop = threading.Event()
    session = FakeSession({})
    renewals = []

    def idle(seconds, should_stop, done_timeout, wakeup=None):
        renewals.append(seconds)
        if len(renewals) == 5:
            stop.set()
        return False

    session.idle = idle
    watcher = imap_watcher(
        CONFIG.model_copy(update={"idle_timeout": 600, "keepalive_interval": 15}),
        lambda batch: None,
        stop,
        open_session=lambda c: session,
    )
    watcher.run()
    assert renewals == [15] * 5
    assert session.searches == 1  # the catch-up on connect only


def test_announced_mail_after_a_renewal_is_fetched():
    stop = threading.Event()
    session = FakeSession({})
    delivered = []

    def idle(seconds, should_stop, done_timeout, wakeup=None):
        if delivered:
            stop.set()
            return False
        session.messages[1] = b"new"
        return True  # EXISTS during IDLE

    session.idle = idle
    watcher = imap_watcher(
        CONFIG, lambda batch: delivered.extend(m.ref for m in batch), stop, lambda c: session
    )
    watcher.run()
    assert delivered == [1] and session.marked == [1]


def test_a_truncated_message_is_parked_never_marked_done():
    """With after_delivery: delete, marking a header-only job's message done would destroy it."""
    session = FakeSession({1: b"a", 2: b"big"})
    session.fetch = lambda uids, batch_size, max_size, max_bytes: iter(
        [[_message(1, b"a", 1), _message(2, b"header", 10**9, truncated=True)]]
    )
    session.pending_uids = lambda: [] if session.marked or session.parked else [1, 2]
    _catch_up(_watcher(lambda batch: None), session)
    assert session.marked == [1] and session.parked == [2]


def test_readiness_returns_after_a_redis_outage_without_reconnecting():
    stop = threading.Event()
    session = FakeSession({1: b"a"})
    calls = []

    def sink(batch):
        calls.append(1)
        if len(calls) == 1:
            raise EnqueueError("redis down")
        stop.set()

    opened = []
    watcher = imap_watcher(CONFIG, sink, stop, open_session=lambda c: opened.append(1) or session)
    watcher.backoff = Backoff(base=0.001, cap=0.001)
    watcher.run()
    assert len(opened) == 1 and session.marked == [1]  # the same IMAP session throughout
    # the outage's error was cleared by the successful catch-up, not by a reconnect (there was none)
    assert watcher.status.last_error is None
