"""Unreadable messages against a fake session: the bisect delivers every readable message, a message that
fails max_failures times gets one failed record, and a server that answers BYE costs reconnects, not a
stall (the real servers: tests/integration/test_unreadable_messages.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from mailroom.config import ImapMailbox, MailboxKind
from mailroom.errors import FetchFailed, ImapError
from mailroom.imap.session import FolderState
from mailroom.imap.watcher import imap_watcher
from mailroom.poison import MemoryLedger, Suspects
from mailroom.source import SourceMessage

CONFIG = ImapMailbox(
    name="support", host="127.0.0.1", security="none", username="u", password="p", batch_size=8
)


@dataclass
class Mailbox:
    messages: dict[int, bytes]
    unreadable: set[int]
    bye: bool = False  # the server ends the session on a failed FETCH (Dovecot) instead of NO (Gmail)
    marked: list[int] = field(default_factory=list)
    fetches: list[tuple[int, ...]] = field(default_factory=list)
    sessions: int = 0


@dataclass
class FakeSession:
    box: Mailbox
    state: FolderState = field(default_factory=lambda: FolderState(uidvalidity=7, uidnext=None, exists=0))
    has_idle: bool = True
    dead: bool = False

    def _alive(self) -> None:
        if self.dead:
            raise ImapError("connection closed")

    def pending_uids(self) -> list[int]:
        self._alive()
        return sorted(uid for uid in self.box.messages if uid not in self.box.marked)

    def saw_activity(self) -> bool:
        return False

    def fetch(
        self, uids: Sequence[int], batch_size: int, max_size: int, max_batch_bytes: int
    ) -> Iterator[list[SourceMessage[int]]]:
        for i in range(0, len(uids), batch_size):
            self._alive()
            chunk = tuple(uids[i : i + batch_size])
            self.box.fetches.append(chunk)
            if self.box.unreadable & set(chunk):
                self.dead = self.box.bye
                words = "BYE Internal error" if self.box.bye else "NO Some messages could not be FETCHed"
                raise FetchFailed("fetch failed", chunk, words, connection_lost=self.box.bye)
            yield [
                SourceMessage(MailboxKind.IMAP, uid, self.box.messages[uid], 1, None, epoch=7)
                for uid in chunk
            ]

    def describe(self, uid: int, header_limit: int) -> tuple[SourceMessage[int], str | None]:
        self._alive()
        return SourceMessage(MailboxKind.IMAP, uid, b"Subject: x\r\n\r\n", 1234, None, True, epoch=7), None

    def mark_done(self, uids: Sequence[int]) -> None:
        self._alive()
        self.box.marked.extend(uids)

    def park(self, uids: Sequence[int]) -> None:
        pass

    def idle(
        self, seconds: float, should_stop: Callable[[], bool], done_timeout: float, wakeup: int | None = None
    ) -> bool:
        time.sleep(0.01)
        return False

    def noop(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _run(box: Mailbox, done: Callable[[list[int], list[int]], bool]) -> tuple[list[int], list[int], float]:
    delivered: list[int] = []
    recorded: list[int] = []
    stop = threading.Event()

    def open_session(config: ImapMailbox) -> FakeSession:
        box.sessions += 1
        return FakeSession(box)

    watcher = imap_watcher(
        CONFIG,
        lambda batch: delivered.extend(m.ref for m in batch),
        stop,
        open_session=open_session,
        ledger=MemoryLedger(max_failures=3),
        record_unreadable=lambda message, words: recorded.append(message.ref),
    )
    thread = threading.Thread(target=watcher.run, daemon=True)
    started = time.monotonic()
    thread.start()
    deadline = started + 10
    while not done(delivered, recorded) and time.monotonic() < deadline:
        time.sleep(0.01)
    took = time.monotonic() - started
    time.sleep(0.1)  # nothing more happens once done
    stop.set()
    thread.join(5)
    return delivered, recorded, took


@pytest.mark.parametrize("bye", [False, True], ids=["NO", "BYE"])
def test_every_readable_message_goes_through_and_each_unreadable_one_is_recorded_once(bye):
    box = Mailbox({uid: b"m" for uid in range(1, 201)}, unreadable={1, 100, 200}, bye=bye)
    readable = [uid for uid in box.messages if uid not in box.unreadable]
    delivered, recorded, took = _run(box, lambda d, r: len(r) == 3 and len(d) >= len(readable))
    print(f"{'BYE' if bye else 'NO'}: {took:.2f} s, {len(box.fetches)} fetches, {box.sessions} sessions")
    assert sorted(delivered) == readable  # each once
    assert sorted(recorded) == [1, 100, 200]
    assert sorted(box.marked) == readable  # the unreadable ones are left unmarked
    assert took < 5  # no backoff while bisecting
    # bisecting costs a few fetches per unreadable message, not one per message
    assert len(box.fetches) < 200 / CONFIG.batch_size + 3 * (8 + 3)


def test_suspects_split_in_halves_and_single_failures_go_to_the_back():
    suspects = Suspects()
    suspects.failed([1, 2, 3, 4, 5])
    assert suspects.next_group({1, 2, 3, 4, 5}) == (1, 2)
    suspects.failed([1, 2])
    assert suspects.next_group({1, 2, 3, 4, 5}) == (1,)
    suspects.failed([1])
    assert suspects.next_group({1, 2, 3, 4, 5}) == (2,)
    suspects.drop({2})
    assert suspects.next_group({1, 3, 4, 5}) == (3, 4, 5)
    suspects.drop({3, 4, 5})
    assert suspects.next_group({1}) == (1,)
    assert suspects.next_group(set()) is None and not suspects
