"""Many messages in files: read them from .eml files, directories and mbox files; write them to a
directory (one ``<name>.eml`` each) or an mbox. Streams: one message in memory at a time.

An mbox is recognised by its first line, ``From <sender> <date>`` (a message's first header line is never
``From `` followed by anything but a colon).
"""

from __future__ import annotations

import mailbox
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class MailFileError(OSError):
    """A source cannot be read (named, with the reason)."""


@dataclass(frozen=True)
class MessageRef:
    """Where one message is: a file (``index`` None), an mbox's ``index``-th message, or stdin (``-``)."""

    path: str
    index: int | None = None

    @property
    def label(self) -> str:
        return self.path if self.index is None else f"{self.path}#{self.index + 1}"


def is_mbox(path: Path) -> bool:
    with path.open("rb") as f:
        first = f.readline(1024)
    return first.startswith(b"From ") and not first[5:].lstrip().startswith(b":")


def refs(sources: Sequence[str]) -> list[MessageRef]:
    """Every message in the sources (files, directories of files, mbox files, ``-``), in order; only
    where each is (the mbox files' tables of contents), not the messages. Raises MailFileError."""
    found: list[MessageRef] = []
    for source in sources:
        if source == "-":
            found.append(MessageRef("-"))
            continue
        path = Path(source)
        try:
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
                for file in files:
                    found.extend(_file_refs(file))
            else:
                found.extend(_file_refs(path))
        except OSError as exc:
            raise MailFileError(f"cannot read {source}: {exc.strerror or exc}") from exc
    return found


def _file_refs(path: Path) -> list[MessageRef]:
    if not is_mbox(path):
        return [MessageRef(str(path))]
    box = mailbox.mbox(path, create=False)
    try:
        return [MessageRef(str(path), n) for n in range(len(box))]
    finally:
        box.close()


class Reader:
    """Reads the messages refs point at, keeping the last mbox open."""

    def __init__(self) -> None:
        self._box: tuple[str, mailbox.mbox, list[str]] | None = None

    def read(self, ref: MessageRef) -> bytes:
        try:
            if ref.path == "-":
                return sys.stdin.buffer.read()
            if ref.index is None:
                return Path(ref.path).read_bytes()
            if self._box is None or self._box[0] != ref.path:
                self.close()
                box = mailbox.mbox(ref.path, create=False)
                self._box = (ref.path, box, list(box.iterkeys()))
            _, box, keys = self._box
            return box.get_bytes(keys[ref.index])
        except (OSError, IndexError, KeyError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise MailFileError(f"cannot read {ref.label}: {reason}") from exc

    def close(self) -> None:
        if self._box is not None:
            self._box[1].close()
            self._box = None


Writer = Callable[[str, bytes], str]  # (name, message) -> where it went


def directory_writer(directory: Path) -> Writer:
    """Writes each message to ``directory/<name>.eml`` (the directory is created)."""
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, raw: bytes) -> str:
        target = directory / f"{name}.eml"
        target.write_bytes(raw)
        return str(target)

    return write


def mbox_writer(path: Path) -> tuple[Writer, Callable[[], None]]:
    """Appends each message to the mbox at ``path`` (created if missing); returns it and its closer."""
    box = mailbox.mbox(path, create=True)
    box.lock()

    def write(name: str, raw: bytes) -> str:
        box.add(raw)
        box.flush()
        return str(path)

    def close() -> None:
        box.unlock()
        box.close()

    return write, close
