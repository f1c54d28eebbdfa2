"""A worked example of a new source (docs/sources.md): a Maildir drop folder, in one module.

Mail is dropped into ``<path>/new/`` (by an MTA, procmail, a script); mailroom takes each file, and once
it is queued, marks it done: ``seen`` renames it into ``cur/`` with the Maildir ``S`` flag, ``delete``
removes it. A file over max_message_size is parked: renamed into ``cur/`` unflagged, left for a human.
It passes the same source contract tests as IMAP and Graph (tests/integration/test_source_contract.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field

from mailroom.config import AfterDeliveryAction, MailboxBase
from mailroom.errors import MailroomError
from mailroom.source import Sink, SourceMessage, Watcher


class MaildirMailbox(MailboxBase):
    """The config class: what every mailbox has (MailboxBase), plus where the Maildir is."""

    kind: Literal["maildir"] = "maildir"
    path: Path = Field(description="the Maildir: new/ is watched, cur/ gets what is done or parked")

    def _problems(self) -> list[tuple[str, str]]:  # the rules between fields, as every config model
        problems = super()._problems()
        if self.after_delivery_action[0] is AfterDeliveryAction.MOVE:
            problems.append(("after_delivery", "a Maildir mailbox supports seen and delete"))
        return problems


class MaildirError(MailroomError):
    """The Maildir cannot be read (missing, not a Maildir): the watcher backs off and tries again."""

    event = "maildir_unreadable"


class MaildirSource:
    def __init__(self, config: MaildirMailbox, stop: threading.Event) -> None:
        self.config = config
        self.stop = stop

    def connect(self) -> MaildirConnection:
        for sub in ("new", "cur"):
            if not (self.config.path / sub).is_dir():
                raise MaildirError(f"{self.config.path} is not a Maildir (no {sub}/)")
        return MaildirConnection(self.config, self.stop)


class MaildirConnection:
    def __init__(self, config: MaildirMailbox, stop: threading.Event) -> None:
        self.config = config
        self.stop = stop
        self.new, self.cur = config.path / "new", config.path / "cur"

    def pending(self) -> Iterator[list[SourceMessage[str]]]:
        names = sorted(entry.name for entry in os.scandir(self.new) if entry.is_file())
        for start in range(0, len(names), self.config.batch_size):
            yield [self._read(name) for name in names[start : start + self.config.batch_size]]

    def _read(self, name: str) -> SourceMessage[str]:
        path = self.new / name
        try:
            with path.open("rb") as file:
                raw = file.read(self.config.max_message_size + 1)
                size = os.fstat(file.fileno()).st_size
                received = datetime.fromtimestamp(os.fstat(file.fileno()).st_mtime, UTC)
        except OSError as exc:
            raise MaildirError(f"{path}: {exc.strerror}") from exc
        truncated = size > self.config.max_message_size
        if truncated:  # the header only: up to the blank line that ends it
            head, sep, _ = raw.partition(b"\r\n\r\n")
            raw = head + sep if sep else raw[: self.config.max_message_size]
        return SourceMessage("maildir", name, raw, size, received, truncated)  # type: ignore[arg-type]

    def mark_done(self, refs: Sequence[str]) -> None:
        action, _ = self.config.after_delivery_action
        for name in refs:
            if action is AfterDeliveryAction.DELETE:
                (self.new / name).unlink(missing_ok=True)
            else:  # seen
                os.replace(self.new / name, self.cur / f"{name}:2,S")

    def park(self, refs: Sequence[str]) -> None:
        for name in refs:
            os.replace(self.new / name, self.cur / f"{name}:2,")  # out of new/, unflagged: left alone

    def wait(self) -> bool:
        self.stop.wait(self.config.poll_interval)
        return True

    def close(self) -> None:
        pass


def maildir_watcher(config: MaildirMailbox, sink: Sink, stop: threading.Event) -> Watcher[str]:
    return Watcher(config, sink, stop, MaildirSource(config, stop))  # type: ignore[arg-type]
