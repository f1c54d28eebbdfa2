"""A quiet mailbox costs nothing between IDLE renewals, on real Dovecot: the watcher's wait is one
poll() on its socket and its stop request together, not a wake-up every second; a stop request or new
mail still ends it at once. (bench/many.py measures what that is worth at 500 mailboxes.)"""

from __future__ import annotations

import select
import threading
import time
from types import SimpleNamespace

import pytest

from devstack import append_messages, make_message
from mailroom.config import ImapMailbox
from mailroom.imap import session as session_module
from mailroom.imap.session import ImapSession
from mailroom.stopping import StopEvent
from tests.support import mailbox_config

pytestmark = pytest.mark.integration


class _CountingPoll:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> _CountingPoll.Poller:
        return _CountingPoll.Poller(self)

    class Poller:
        def __init__(self, counter: _CountingPoll) -> None:
            self.counter = counter
            self.poller = select.poll()

        def register(self, fd, mask):
            self.poller.register(fd, mask)

        def poll(self, timeout):
            self.counter.calls += 1
            return self.poller.poll(timeout)


@pytest.fixture
def polls(monkeypatch):
    counter = _CountingPoll()
    monkeypatch.setattr(session_module, "select", SimpleNamespace(poll=counter, POLLIN=select.POLLIN))
    return counter


@pytest.fixture
def session(imap_account):
    config = ImapMailbox.model_validate(mailbox_config(imap_account))
    opened = ImapSession.open(config)
    yield opened
    opened.close()


def test_a_quiet_idle_waits_in_one_poll_until_its_renewal(session, polls):
    stop = StopEvent()
    started = time.monotonic()
    assert session.idle(3.0, stop.is_set, 5.0, stop.fileno()) is False
    assert time.monotonic() - started >= 2.9
    assert polls.calls == 1  # in one-second slices: 3


def test_a_stop_request_ends_a_long_idle_at_once(session, polls):
    stop = StopEvent()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    assert session.idle(60.0, stop.is_set, 5.0, stop.fileno()) is False
    assert time.monotonic() - started < 2.0
    assert polls.calls == 1


def test_new_mail_ends_a_long_idle(session, imap_account):
    stop = StopEvent()
    account = (imap_account.host, imap_account.port, imap_account.username, imap_account.password)
    threading.Timer(0.3, append_messages, args=(*account, [make_message(1)])).start()
    started = time.monotonic()
    assert session.idle(60.0, stop.is_set, 5.0, stop.fileno()) is True
    assert time.monotonic() - started < 10.0  # Dovecot announces within its notification delay


def test_without_a_wakeup_descriptor_the_wait_still_notices_a_stop(session):
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    assert session.idle(60.0, stop.is_set, 5.0) is False
    assert time.monotonic() - started < 3.0


def test_renewals_leave_nothing_behind_on_the_connection(session, imap_account):
    """imaplib keeps a dict entry per command tag and lists of untagged responses; IDLE renewals and
    deliveries must not add to them for ever (a slow growth a long soak would show)."""
    stop = StopEvent()
    imap = session._client._imap
    account = (imap_account.host, imap_account.port, imap_account.username, imap_account.password)

    def held() -> tuple[int, int]:
        return len(imap.tagged_commands), sum(len(v) for v in imap.untagged_responses.values())

    sizes = []
    for round_ in range(4):
        for _ in range(30):
            session.idle(0.001, stop.is_set, 5.0, stop.fileno())
        append_messages(*account, [make_message(round_)])
        uids = session.pending_uids()
        for batch in session.fetch(uids, 10, 1 << 20, 1 << 20):
            session.mark_done([m.ref for m in batch])
        session.pending_uids()  # reads the last STORE's answer
        sizes.append(held())
    assert sizes[-1] == sizes[0], (sizes, imap.untagged_responses)
    assert sizes[-1][0] == 0
