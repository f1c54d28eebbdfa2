"""The pieces a quiet mailbox waits with: a stop request a poll() hears, and IDLE begun, renewed and
ended on the wire (against a scripted server on a socket pair; tests/integration/test_idle_cost.py runs
them on Dovecot)."""

from __future__ import annotations

import gc
import imaplib
import os
import select
import socket
import threading
import time
from collections.abc import Iterator

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


class _Imap:
    """What idling.Idle needs of imaplib.IMAP4: _new_tag, tagged_commands and the reader ``file``."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")
        self.tagged_commands: dict[bytes, object] = {}
        self.tags = 0

    def _new_tag(self) -> bytes:
        self.tags += 1
        tag = b"A%d" % self.tags
        self.tagged_commands[tag] = None
        return tag


@pytest.fixture
def wire() -> Iterator[tuple[idling.Idle, socket.socket, _Imap]]:
    """An Idle on one end of a socket pair (with a timeout, as imaplib's socket has); the test plays
    the server on the other end, its answers written before the client asks (they wait in the pipe)."""
    client, server = socket.socketpair()
    client.settimeout(30.0)
    imap = _Imap(client)
    yield idling.Idle(imap, client), server, imap  # type: ignore[arg-type]
    client.close()
    server.close()


def _sent(server: socket.socket) -> bytes:
    server.settimeout(1.0)
    return server.recv(65536)


def test_begin_renew_and_end_a_quiet_idle(wire):
    idle, server, imap = wire
    server.sendall(b"+ idling\r\n")
    assert idle.begin(5.0) is False
    assert _sent(server) == b"A1 IDLE\r\n"
    server.sendall(b"A1 OK Idle completed\r\n+ idling\r\n")
    assert idle.renew(5.0) is False
    assert _sent(server) == b"DONE\r\nA2 IDLE\r\n"  # one write
    assert idle.next_line(0.05) is None
    server.sendall(b"A2 OK Idle completed\r\n")
    assert idle.end(5.0, 30.0) is False
    assert _sent(server) == b"DONE\r\n"
    assert imap.tagged_commands == {}
    assert idle.sock.gettimeout() == 30.0  # imaplib's again


def test_a_renewal_answered_in_two_segments(wire):
    """DONE's OK at once, the continuation after the server's sync: read as they come."""
    idle, server, imap = wire
    server.sendall(b"+ idling\r\n")
    idle.begin(5.0)
    server.sendall(b"A1 OK Idle completed\r\n")
    threading.Timer(0.1, server.sendall, args=(b"+ idling\r\n",)).start()
    assert idle.renew(5.0) is False
    assert idle.buffer == b"" and list(imap.tagged_commands) == [b"A2"]


@pytest.mark.parametrize(
    "answer",
    [
        b"* 4 EXISTS\r\nA1 OK done\r\n+ idling\r\n",  # in DONE's answer
        b"A1 OK done\r\n* 4 EXISTS\r\n+ idling\r\n",  # between the OK and the next continuation
    ],
    ids=["before-the-ok", "before-the-continuation"],
)
def test_mail_announced_during_a_renewal_is_reported(wire, answer):
    idle, server, _ = wire
    server.sendall(b"+ idling\r\n")
    idle.begin(5.0)
    server.sendall(answer)
    assert idle.renew(5.0) is True


def test_mail_announced_with_the_renewed_continuation_waits_in_the_buffer(wire):
    """Dovecot's way: new mail since the last IDLE comes right after the next one's continuation, often
    in the same segment; the next wait must see it at once, not at the renewal after."""
    idle, server, _ = wire
    server.sendall(b"+ idling\r\n")
    idle.begin(5.0)
    server.sendall(b"A1 OK done\r\n+ idling\r\n* 5 EXISTS\r\n* 1 RECENT\r\n")
    assert idle.renew(5.0) is False
    server.close()  # nothing more will come: the line must already be here
    assert idle.next_line(30.0) == b"* 5 EXISTS"


def test_mail_announced_before_the_continuation_or_in_dones_answer_is_reported(wire):
    idle, server, _ = wire
    server.sendall(b"* 4 EXISTS\r\n+ idling\r\n")
    assert idle.begin(5.0) is True
    server.sendall(b"* 1 RECENT\r\nA1 OK done\r\n")
    assert idle.end(5.0, 30.0) is True


def test_what_imaplib_had_buffered_is_read_by_the_idle(wire):
    idle, server, imap = wire
    server.sendall(b"* 3 EXISTS\r\n")
    assert imap.file.peek(1)  # in imaplib's buffer, not the socket's
    server.sendall(b"+ idling\r\n")
    assert idle.begin(5.0) is True


def test_what_comes_after_dones_answer_is_judged_and_imaplib_starts_afresh(wire):
    idle, server, imap = wire
    server.sendall(b"+ idling\r\n")
    idle.begin(5.0)
    server.sendall(b"A1 OK done\r\n* 6 EXISTS\r\n")
    time.sleep(0.05)  # one segment or two: both are read before end() returns
    assert idle.end(5.0, 30.0) is True
    server.sendall(b"A2 OK next command\r\n")
    assert imap.file.readline() == b"A2 OK next command\r\n"


def test_a_literal_in_an_untagged_response_is_skipped_whole(wire):
    idle, server, _ = wire
    server.sendall(b"+ idling\r\n* 3 FETCH (X-THING {5}\r\n12345)\r\n* 5 EXISTS\r\n")
    idle.begin(5.0)
    assert idle.next_line(1.0) == b"* 3 FETCH (X-THING {5}"
    assert idle.next_line(1.0) == b"* 5 EXISTS"


def test_a_line_split_across_segments_is_read_whole(wire):
    idle, server, _ = wire
    server.sendall(b"+ idling\r\n* 2 EXI")
    idle.begin(5.0)
    threading.Timer(0.1, server.sendall, args=(b"STS\r\n",)).start()
    assert idle.next_line(5.0) == b"* 2 EXISTS"


def test_a_stop_request_ends_the_wait_for_news(wire):
    idle, server, _ = wire
    server.sendall(b"+ idling\r\n")
    idle.begin(5.0)
    stop = StopEvent()
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    assert idle.next_line(30.0, stop.fileno()) is None
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"A1 NO IDLE not allowed now\r\n", imaplib.IMAP4.error),
        (b"A1 BAD what\r\n", imaplib.IMAP4.error),
        (b"A1 OK no idle for you\r\n", imaplib.IMAP4.error),
        (b"* BYE shutting down\r\n", imaplib.IMAP4.abort),
        (None, imaplib.IMAP4.abort),  # EOF
    ],
)
def test_a_refused_idle_or_a_closing_server_raises_imaplibs_errors(wire, answer, error):
    idle, server, _ = wire
    if answer is None:
        server.shutdown(socket.SHUT_WR)
    else:
        server.sendall(answer)
    with pytest.raises(error):
        idle.begin(5.0)


def test_a_refused_done_raises(wire):
    idle, server, _ = wire
    server.sendall(b"+ idling\r\n")
    idle.begin(5.0)
    server.sendall(b"A1 BAD no\r\n")
    with pytest.raises(imaplib.IMAP4.error):
        idle.renew(5.0)


def test_a_renewal_nobody_answers_times_out(wire):
    """The renewal's round trip is what notices a silently cut link: no answer within the timeout is
    an error, not a wait."""
    idle, server, _ = wire
    server.sendall(b"+ idling\r\n")
    idle.begin(5.0)
    server.sendall(b"A1 OK done\r\n")  # the old IDLE ended, the new one never answers
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        idle.renew(0.3)
    assert 0.25 < time.monotonic() - started < 3.0


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
