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
from mailroom.imap import idling
from mailroom.imap.session import ImapSession
from mailroom.stopping import StopEvent
from tests.support import mailbox_config

pytestmark = pytest.mark.integration


class _CountingPoll:
    """Counts the waits for news: polls on the socket and the stop request's descriptor together (a
    renewal's answer is waited for on the socket alone)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> _CountingPoll.Poller:
        return _CountingPoll.Poller(self)

    class Poller:
        def __init__(self, counter: _CountingPoll) -> None:
            self.counter = counter
            self.poller = select.poll()
            self.fds = 0

        def register(self, fd, mask):
            self.fds += 1
            self.poller.register(fd, mask)

        def poll(self, timeout):
            self.counter.calls += self.fds > 1
            return self.poller.poll(timeout)


@pytest.fixture
def polls(monkeypatch):
    counter = _CountingPoll()
    fake = SimpleNamespace(poll=counter, POLLIN=select.POLLIN, POLLOUT=select.POLLOUT)
    monkeypatch.setattr(idling, "select", fake)
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


@pytest.mark.parametrize("lead", [0.3, 0.1, 0.02])
def test_mail_arriving_just_before_a_renewal_is_noticed_at_once(session, imap_account, lead):
    """A message APPENDed ``lead`` s before the renewal (DONE and the next IDLE in one write): Dovecot
    has not announced it yet (it holds notifications about half a second) and does so right after the
    new IDLE's continuation. The renewal reports it, or the very next wait does, not the renewal after
    (30 s later here)."""
    stop = StopEvent()
    account = (imap_account.host, imap_account.port, imap_account.username, imap_account.password)
    threading.Timer(2.0 - lead, append_messages, args=(*account, [make_message(1)])).start()
    started = time.monotonic()
    news = session.idle(2.0, stop.is_set, 5.0, stop.fileno())
    if not news:
        news = session.idle(30.0, stop.is_set, 5.0, stop.fileno())
    assert news is True
    assert time.monotonic() - started < 10.0
    assert session.pending_uids() == [1]  # and the session, its IDLE ended, answers a SEARCH


def test_idle_renewals_and_news_over_tls(tls_dovecot):
    """The same IDLE over IMAPS: the socket is an SSLSocket, read and written non-blocking while the IDLE
    runs (bytes the TLS layer already decrypted count as readable)."""
    dovecot, ca_path = tls_dovecot
    account = dovecot.add_user("tls", "secret")
    config = mailbox_config(account, security="tls", port=dovecot.imaps_port, ca_file=str(ca_path))
    opened = ImapSession.open(ImapMailbox.model_validate(config))
    try:
        stop = StopEvent()
        for _ in range(3):  # quiet renewals, the IDLE left running between them
            assert opened.idle(0.2, stop.is_set, 5.0, stop.fileno()) is False
        account_args = (account.host, account.port, account.username, account.password)
        threading.Timer(0.3, append_messages, args=(*account_args, [make_message(1)])).start()
        started = time.monotonic()
        assert opened.idle(60.0, stop.is_set, 5.0, stop.fileno()) is True
        assert time.monotonic() - started < 10.0
        assert opened.pending_uids() == [1]
    finally:
        opened.close()
