"""How commands print: tables that fit 120 columns, JSON documents (streamed for long listings), progress
bars on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from mailroom.terminal import sanitize

WIDTH = 120  # a table's lines are at most this long
PROGRESS_AFTER = 20  # a progress bar for more items than this (or any count on a terminal)
_HEAD_ROWS = 200  # a streamed table's column widths come from its first rows
_MIN_WIDTH = 3
T = TypeVar("T")


def clean(text: str | None) -> str:
    """One line of terminal-safe text: whitespace runs (newlines included) become one space, and every
    other non-printable character (a terminal's escape sequence from hostile mail) shows as its escape."""
    return sanitize(" ".join((text or "").split()))


def printable(text: str) -> str:
    """Several lines as they are (indentation kept, for a traceback), terminal-safe."""
    return sanitize(text, keep_newlines=True)


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def fit(natural: Sequence[int], fixed: Sequence[bool], width: int = WIDTH) -> list[int]:
    """Column widths that fit ``width`` with two spaces between columns: the widest column that is not
    ``fixed`` gives a character at a time (fixed ones only when nothing else can)."""
    widths = list(natural)
    gaps = 2 * (len(widths) - 1)
    while sum(widths) + gaps > width:
        shrinkable = [i for i, w in enumerate(widths) if not fixed[i] and w > _MIN_WIDTH]
        if not shrinkable:
            shrinkable = [i for i, w in enumerate(widths) if w > _MIN_WIDTH]
            if not shrinkable:
                break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


class Table:
    """Prints rows under headers, each cell cleaned and cut (with …) so every line fits ``WIDTH``.

    Streams: the column widths come from the first ``_HEAD_ROWS`` rows (held until then), later rows are
    cut to them. Columns named in ``fixed`` (ids, times) are cut only when the others cannot give more.
    """

    def __init__(self, headers: Sequence[str], fixed: Iterable[str] = ()) -> None:
        self.headers = list(headers)
        self.fixed = [h in set(fixed) for h in self.headers]
        self._head: list[list[str]] = []
        self._widths: list[int] | None = None
        self.rows = 0

    def add(self, row: Sequence[str | None]) -> None:
        self.rows += 1
        cells = [clean(c) or "-" for c in row]
        if self._widths is None:
            self._head.append(cells)
            if len(self._head) >= _HEAD_ROWS:
                self._flush_head()
            return
        self._print(cells)

    def _flush_head(self) -> None:
        natural = [max([len(h), *(len(r[i]) for r in self._head)]) for i, h in enumerate(self.headers)]
        self._widths = fit(natural, self.fixed)
        self._print(self.headers)
        for cells in self._head:
            self._print(cells)
        self._head = []

    def _print(self, cells: Sequence[str]) -> None:
        assert self._widths is not None
        line = "  ".join(cut(c, w).ljust(w) for c, w in zip(cells, self._widths, strict=True))
        click.echo(line.rstrip())

    def close(self) -> None:
        if self._widths is None:
            self._flush_head()


class JsonArray:
    """Prints one JSON array an element at a time, so a long listing streams and is still one document."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, value: Any) -> None:
        text = json.dumps(value, ensure_ascii=False, indent=2)
        click.echo(("[\n" if self.count == 0 else ",\n") + _indent(text), nl=False)
        self.count += 1

    def close(self) -> None:
        click.echo("[]" if self.count == 0 else "\n]")


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


@contextmanager
def progress(items: Iterable[T], length: int | None, label: str) -> Iterator[Iterable[T]]:
    """``items``, with a progress bar on stderr when there are more than PROGRESS_AFTER of them or stderr
    is a terminal (stdout stays the command's output)."""
    many = length is None or length > PROGRESS_AFTER
    if not (many or (sys.stderr.isatty() and length and length > 1)):
        yield items
        return
    with click.progressbar(items, length=length, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar
