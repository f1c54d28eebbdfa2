"""Where an IDLE's EXISTS can land, against a scripted server on a loopback socket, with the watcher's
single poll() wait (a StopEvent's descriptor, 30 s to the renewal): each must end the IDLE at once.

The racy one is a line already read into the IDLE's buffer (it came in the same segment as the
continuation, or behind another untagged line): poll() on the socket would not see it, and the IDLE
would sleep until its renewal. A real Dovecot cannot be made to send that segment on purpose, so the
server here does (tests/integration/test_idle_cost.py has Dovecot's own case, mail announced right
after a renewal's continuation)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from imapclient import IMAPClient

from mailroom.config import ImapMailbox
from mailroom.imap.session import FolderState, ImapSession
from mailroom.stopping import StopEvent

RENEWAL = 30.0  # the IDLE's length: a missed wake-up waits this long
PROMPT = 5.0  # a wake-up takes milliseconds; this much leaves room for a loaded machine


class _ScriptedServer:
    """Greets, answers CAPABILITY, and answers IDLE with ``on_idle`` (sent in one write), waits
    ``delay`` seconds, sends ``later``; answers DONE with ``on_done`` and the tagged OK."""

    def __init__(self, on_idle: bytes, later: bytes = b"", delay: float = 0.0, on_done: bytes = b"") -> None:
        self.on_idle, self.later, self.delay, self.on_done = on_idle, later, delay, on_done
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 IDLE] scripted\r\n")
            idle_tag = b""
            for line in lines:
                tag, _, command = line.rstrip(b"\r\n").partition(b" ")
                verb = command.split(b" ", 1)[0].upper()
                if verb == b"CAPABILITY":
                    conn.sendall(b"* CAPABILITY IMAP4rev1 IDLE\r\n" + tag + b" OK done\r\n")
                elif verb == b"IDLE":
                    idle_tag = tag
                    conn.sendall(self.on_idle)
                    if self.later:
                        time.sleep(self.delay)
                        conn.sendall(self.later)
                elif tag.upper() == b"DONE":
                    conn.sendall(self.on_done + idle_tag + b" OK Idle completed\r\n")
                elif verb == b"LOGOUT":
                    conn.sendall(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                    return
                else:
                    conn.sendall(tag + b" BAD unexpected\r\n")


@pytest.fixture
def open_session() -> Iterator[object]:
    sessions: list[ImapSession] = []

    def open_(server: _ScriptedServer) -> ImapSession:
        config = ImapMailbox.model_validate(
            {
                "name": "scripted",
                "host": "127.0.0.1",
                "port": server.port,
                "security": "none",
                "username": "u",
                "password": "p",
                "handler": "tests.support:record",
                "timeout": 10,
            }
        )
        client = IMAPClient("127.0.0.1", port=server.port, ssl=False, timeout=10)
        session = ImapSession(config, client, FolderState(1, 2, 1), frozenset({b"IDLE"}))
        sessions.append(session)
        return session

    yield open_
    for session in sessions:
        session.close()


def _idle(session: ImapSession) -> tuple[bool, float]:
    stop = StopEvent()
    started = time.monotonic()
    news = session.idle(RENEWAL, stop.is_set, 5.0, stop.fileno())
    return news, time.monotonic() - started


@pytest.mark.parametrize(
    "segment",
    [
        b"+ idling\r\n* 2 EXISTS\r\n* 1 RECENT\r\n",  # with the continuation
        b"+ idling\r\n* OK Still here\r\n* 2 EXISTS\r\n",  # behind another untagged line
    ],
    ids=["with-continuation", "behind-another-line"],
)
def test_exists_already_buffered_ends_the_idle_at_once(open_session, segment):
    news, took = _idle(open_session(_ScriptedServer(segment)))
    assert news is True
    assert took < PROMPT


def test_exists_sent_while_the_watcher_polls_ends_the_idle_at_once(open_session):
    news, took = _idle(open_session(_ScriptedServer(b"+ idling\r\n", b"* 2 EXISTS\r\n", delay=0.3)))
    assert news is True
    assert took < PROMPT


def test_exists_split_across_segments_is_read_whole(open_session):
    news, took = _idle(open_session(_ScriptedServer(b"+ idling\r\n* 2 EXI", b"STS\r\n", delay=0.3)))
    assert news is True
    assert took < PROMPT
