"""The pieces a quiet mailbox waits with: a stop request a poll() hears, and IDLE begun and ended on the
wire (against a scripted imaplib connection; tests/integration/test_idle_cost.py runs them on Dovecot)."""

from __future__ import annotations

import gc
import imaplib
import os
import select
import threading

import pytest

from mailroom.imap import idling
from mailroom.stopping import StopEvent, wakeup_fd


def _readable(fd: int, timeout_ms: int = 0) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout_ms))


def test_stop_event_descriptor_turns_readable_when_set_and_stays_so():
    event = StopEvent()
    assert not _readable(event.fileno())
    event.set()
    event.set()  # a second set changes nothing
    assert event.is_set()
    assert _readable(event.fileno()) and _readable(event.fileno())  # every waiter hears it
    event.clear()
    assert not _readable(event.fileno()) and not event.is_set()


def test_stop_event_set_from_another_thread_wakes_a_poll():
    event = StopEvent()
    threading.Timer(0.05, event.set).start()
    assert _readable(event.fileno(), timeout_ms=5000)


def test_stop_event_closes_its_descriptor_when_collected():
    event = StopEvent()
    fd = event.fileno()
    del event
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_only_a_stop_event_has_a_wakeup_descriptor():
    assert wakeup_fd(threading.Event()) is None
    event = StopEvent()
    assert wakeup_fd(event) == event.fileno()


class _Scripted:
    """What idling needs of imaplib.IMAP4: send, _get_line, read, _new_tag, tagged_commands."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = list(lines)
        self.sent: list[bytes] = []
        self.tagged_commands: dict[bytes, object] = {}
        self.literals_read: list[int] = []

    def _new_tag(self) -> bytes:
        self.tagged_commands[b"A1"] = None
        return b"A1"

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def _get_line(self) -> bytes:
        if not self.lines:
            raise imaplib.IMAP4.abort("socket error: EOF")
        return self.lines.pop(0)

    def read(self, size: int) -> bytes:
        self.literals_read.append(size)
        return b"x" * size


def test_begin_and_end_a_quiet_idle():
    imap = _Scripted([b"+ idling", b"A1 OK Idle completed (0.001 + 15.000 secs)."])
    tag, announced = idling.begin(imap)  # type: ignore[arg-type]
    assert (tag, announced) == (b"A1", False)
    assert idling.end(imap, tag) is False  # type: ignore[arg-type]
    assert imap.sent == [b"A1 IDLE\r\n", b"DONE\r\n"]
    assert imap.tagged_commands == {}


def test_mail_announced_before_the_continuation_or_in_dones_answer_is_reported():
    imap = _Scripted([b"* 4 EXISTS", b"+ idling", b"* 1 RECENT", b"A1 OK done"])
    tag, announced = idling.begin(imap)  # type: ignore[arg-type]
    assert announced
    assert idling.end(imap, tag)  # type: ignore[arg-type]


def test_a_literal_in_an_untagged_response_is_skipped_whole():
    imap = _Scripted([b"+ idling", b"* 3 FETCH (X-THING {5}", b")", b"* 5 EXISTS", b"A1 OK done"])
    tag, _ = idling.begin(imap)  # type: ignore[arg-type]
    assert idling.end(imap, tag)  # type: ignore[arg-type]
    assert imap.literals_read == [5]


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ([b"A1 NO IDLE not allowed now"], imaplib.IMAP4.error),
        ([b"A1 BAD what"], imaplib.IMAP4.error),
        ([b"* BYE shutting down"], imaplib.IMAP4.abort),
        ([], imaplib.IMAP4.abort),
    ],
)
def test_a_refused_idle_or_a_closing_server_raises_imaplibs_errors(lines, error):
    with pytest.raises(error):
        idling.begin(_Scripted(lines))  # type: ignore[arg-type]


def test_a_refused_done_raises():
    imap = _Scripted([b"+ idling", b"A1 BAD no"])
    tag, _ = idling.begin(imap)  # type: ignore[arg-type]
    with pytest.raises(imaplib.IMAP4.error):
        idling.end(imap, tag)  # type: ignore[arg-type]


def test_watch_hands_its_watchers_a_stop_they_can_wait_on(monkeypatch):
    import signal

    from mailroom import app
    from mailroom.config import Settings

    given: list[threading.Event] = []

    class Started:
        def join(self, timeout: float) -> bool:
            return True

    def start_watchers(settings, stop):
        given.append(stop)
        stop.set()  # as SIGTERM would
        return Started()

    monkeypatch.setattr(app, "start_watchers", start_watchers)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    mailbox = {"name": "m", "host": "imap.example.com", "username": "u", "password": "p"}
    settings = Settings.model_validate({"redis_url": "redis://127.0.0.1:1/0", "mailboxes": [mailbox]})
    assert app.run_watch(settings) == 0
    assert wakeup_fd(given[0]) is not None  # a plain Event would send every IDLE back to 1 s slices
