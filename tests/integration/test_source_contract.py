"""The source contract: every source (IMAP against a real Dovecot, Graph against tests/graphserver.py, and
the Maildir example of docs/sources.md) behaves the same under the shared delivery loop
(mailroom.source.Watcher).

- a batch is marked done only after the sink returned; a sink that raises leaves it unmarked;
- a message over max_message_size reaches the sink header-only (truncated) and is parked: it stays on
  the server, even with after_delivery: delete;
- failures are retried with backoff and counted, and the status says what happened;
- the status is connected while the source is reachable and says why when it is not.

A new source gets these tests by adding a harness below (docs/sources.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from devstack import make_message
from devstack.mailbox import append_messages, count
from mailroom import metrics
from mailroom.config import GraphMailbox, ImapMailbox, OAuth2Config
from mailroom.errors import EnqueueError
from mailroom.source import Backoff, Sink, SourceMessage, Watcher
from tests.graphserver import GraphServer
from tests.oauthserver import OAuthServer
from tests.support import mailbox_config, wait_for

pytestmark = pytest.mark.integration
USER = "support@contoso.example"


class Harness(Protocol):
    """One source under test: put mail in, build a watcher over it, look at what is left."""

    kind: str

    def add(self, raw: bytes) -> None: ...
    def watcher(self, sink: Sink, **config: Any) -> Watcher[Any]: ...
    def unmarked(self) -> int: ...  # messages still waiting (not seen, not moved, not deleted)
    def present(self) -> int: ...  # messages still in the folder
    def break_login(self) -> None: ...


@dataclass
class ImapHarness:
    account: Any
    stop: threading.Event
    kind: str = "imap"
    password: str = ""

    def _login(self) -> tuple[str, int, str, str]:
        return self.account.host, self.account.port, self.account.username, self.account.password

    def add(self, raw: bytes) -> None:
        append_messages(*self._login(), [raw])

    def watcher(self, sink: Any, **config: Any) -> Watcher[Any]:
        from mailroom.imap.watcher import imap_watcher

        box = mailbox_config(self.account, **config)
        if self.password:
            box["password"] = self.password
        return imap_watcher(ImapMailbox.model_validate(box), sink, self.stop)

    def unmarked(self) -> int:
        return count(*self._login(), criteria="UNSEEN")

    def present(self) -> int:
        return count(*self._login(), criteria="ALL")

    def break_login(self) -> None:
        self.password = "wrong"


@dataclass
class MemoryDeltaStore:
    link: str | None = None

    def get(self) -> str | None:
        return self.link

    def set(self, link: str) -> None:
        self.link = link

    def clear(self) -> None:
        self.link = None


@dataclass
class GraphHarness:
    server: GraphServer
    oauth: OAuthServer
    secret: Path
    stop: threading.Event
    kind: str = "graph"
    store: MemoryDeltaStore = field(default_factory=MemoryDeltaStore)

    def add(self, raw: bytes) -> None:
        self.server.deliver(raw)

    def watcher(self, sink: Any, **config: Any) -> Watcher[Any]:
        from mailroom.graph.client import GraphClient
        from mailroom.graph.watcher import graph_watcher
        from mailroom.oauth2 import token_source_for

        graph = {
            "tenant": "contoso",
            "client_id": "mailroom",
            "client_secret_file": str(self.secret),
            "user": USER,
            "token_url": self.oauth.token_url,
            "base_url": self.server.base_url,
        }
        box = GraphMailbox.model_validate(
            {"name": "support", "kind": "graph", "graph": graph, "poll_interval": 0.2, **config}
        )
        credentials = OAuth2Config(client_credentials=box.graph.client_credentials())
        client = GraphClient(box, token_source_for(box.name, credentials, timeout=5), self.stop.wait)
        return graph_watcher(box, sink, self.stop, client, self.store)

    def unmarked(self) -> int:
        return len(self.server.unread())

    def present(self) -> int:
        return len(self.server.in_folder())

    def break_login(self) -> None:
        self.secret.write_text("wrong\n")


@dataclass
class MaildirHarness:
    """The worked example of docs/sources.md (tests/maildir_source.py) under the same contract."""

    path: Path
    stop: threading.Event
    kind: str = "maildir"
    broken: bool = False
    added: int = 0

    def add(self, raw: bytes) -> None:
        self.added += 1
        tmp = self.path / "tmp" / f"{self.added}.mailroom-test"
        tmp.write_bytes(raw)
        tmp.rename(self.path / "new" / tmp.name)  # the Maildir delivery protocol: tmp/, then new/

    def watcher(self, sink: Any, **config: Any) -> Watcher[Any]:
        from tests.maildir_source import MaildirMailbox, maildir_watcher

        path = self.path.parent / "missing" if self.broken else self.path
        box = MaildirMailbox.model_validate({"name": "support", "path": path, "poll_interval": 0.2, **config})
        return maildir_watcher(box, sink, self.stop)

    def unmarked(self) -> int:
        cur = [p for p in (self.path / "cur").iterdir() if not p.name.endswith("S")]
        return len(list((self.path / "new").iterdir())) + len(cur)

    def present(self) -> int:
        return len(list((self.path / "new").iterdir())) + len(list((self.path / "cur").iterdir()))

    def break_login(self) -> None:
        self.broken = True


@pytest.fixture(params=["imap", "graph", "maildir"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    stop = threading.Event()
    if request.param == "maildir":
        for sub in ("tmp", "new", "cur"):
            (tmp_path / "Maildir" / sub).mkdir(parents=True)
        yield MaildirHarness(tmp_path / "Maildir", stop)
    elif request.param == "imap":
        request.getfixturevalue("dovecot")
        yield ImapHarness(request.getfixturevalue("imap_account"), stop)
    else:
        secret = tmp_path / "client-secret"
        secret.write_text("s3cret\n")
        with OAuthServer(username=USER) as oauth, GraphServer(user=USER, token_ok=oauth.active) as server:
            yield GraphHarness(server, oauth, secret, stop)
    stop.set()


@contextmanager
def running(watcher: Watcher[Any]) -> Iterator[Watcher[Any]]:
    watcher.backoff = Backoff(base=0.05, cap=0.2)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        watcher.stop.set()
        thread.join(10)
        assert not thread.is_alive()
        watcher.stop.clear()  # the harness's next watcher runs again


def test_marks_only_after_the_sink_returned(source: Harness) -> None:
    for i in range(3):
        source.add(make_message(i))
    failing = threading.Event()
    failing.set()
    got: list[SourceMessage[Any]] = []
    unmarked_at_sink_time: list[int] = []

    def sink(batch: Sequence[SourceMessage[Any]]) -> None:
        if failing.is_set():
            raise EnqueueError("Redis is away")
        unmarked_at_sink_time.append(source.unmarked())
        got.extend(batch)

    with running(source.watcher(sink, batch_size=2)) as watcher:
        wait_for(lambda: watcher.status.last_error == "Redis is away", timeout=20)
        assert source.unmarked() == 3  # the sink raised: nothing was marked
        failing.clear()
        wait_for(lambda: source.unmarked() == 0, timeout=20)
    assert unmarked_at_sink_time == [3, 1]  # each batch was still unmarked while the sink had it
    assert len(got) == 3 and {m.kind for m in got} == {source.kind}
    assert all(not m.truncated and m.size == len(m.raw) for m in got)


def test_oversize_is_parked_with_its_header_even_with_delete(source: Harness) -> None:
    big = make_message(1, size=50_000)
    source.add(big)
    source.add(make_message(2))
    got: list[SourceMessage[Any]] = []
    with running(source.watcher(got.extend, max_message_size=10_000, after_delivery="delete")):
        wait_for(lambda: len(got) == 2 and source.present() == 1, timeout=20)
    (parked,) = [m for m in got if m.truncated]
    assert parked.size >= 50_000 and len(parked.raw) < 10_000
    assert big.startswith(parked.raw.rstrip(b"\r\n")) and b"Subject:" in parked.raw
    assert source.present() == 1  # the big one stays in the folder (IMAP flags it \\Seen and parked)
    time.sleep(1)  # a few more rounds (poll_interval 0.2 s for Graph; IMAP catches up on each IDLE news)
    assert len(got) == 2  # and is not offered again


def test_failures_back_off_and_are_counted_then_recover(source: Harness) -> None:
    source.add(make_message(1))
    attempts: list[float] = []

    def sink(batch: Sequence[SourceMessage[Any]]) -> None:
        attempts.append(threading.get_native_id())
        if len(attempts) <= 3:
            raise EnqueueError(f"attempt {len(attempts)} refused")

    retries = metrics.SOURCE_RETRIES.labels("support", source.kind)
    before = retries._value.get()
    with running(source.watcher(sink)) as watcher:
        wait_for(lambda: source.unmarked() == 0, timeout=20)
        wait_for(lambda: watcher.status.last_error is None, timeout=5)  # cleared after the catch-up
        assert watcher.status.connected
        assert watcher.backoff.attempt == 0  # reset by the delivery that worked
    assert len(attempts) == 4
    assert retries._value.get() - before == 3


def test_status_says_connected_or_why_not(source: Harness) -> None:
    with running(source.watcher(lambda batch: None)) as watcher:
        wait_for(lambda: watcher.status.connected, timeout=20)
        assert watcher.status.last_error is None
    source.break_login()
    with running(source.watcher(lambda batch: None)) as watcher:
        wait_for(lambda: watcher.status.last_error is not None, timeout=20)
        assert not watcher.status.connected
        turned = watcher.status.last_turn
        # still turning, retrying (Dovecot delays a refused login by 2 s, auth_failure_delay)
        wait_for(lambda: watcher.status.last_turn > turned, timeout=20)
