"""Hostile mail: the worst parse time per family of hostile message, next to a plain message of its size.

``python -m bench.hostile [--size BYTES] [--rounds N]`` (``make bench`` runs it too, see bench/run.py). No
servers: it times the two parses every message gets, on this machine, in this process.

* **watcher**: what the IMAP watcher does per message before the enqueue (``JobPayload.from_message``:
  parse_message without recipients, the capped fields, the payload), on the thread every mailbox of the
  process shares;
* **parse**: ``parse_message`` with recipients, as ``mailroom parse`` and handlers calling it do;
* **worker**: ``parse_body``, what ``IncomingEmail.body`` costs a handler that reads the text.

Each family is built to about ``--size`` bytes; its plain twin has the same header bytes (ordinary short
header lines) and the same body bytes (prose), so the ratio says what the hostile shape costs over the
bytes alone. The budget (:data:`BUDGET_S_PER_MIB`, documented in docs/performance.md) is per MiB of
message: a family over it, or over :data:`MAX_RATIO` times its plain twin, is marked ``OVER``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mailroom.config import MailboxKind
from mailroom.keys import AddressTemplate
from mailroom.message import parse_body, parse_message
from mailroom.schema import JobPayload
from mailroom.source import SourceMessage

TEMPLATE = AddressTemplate.parse("incoming+%{key}@example.com")
MIB = 1024 * 1024
MAX_RATIO = 20.0
# Seconds per MiB of message, per stage: the most any message may cost, whatever its shape.
BUDGET_S_PER_MIB = {"watcher": 0.5, "parse": 1.0, "worker": 2.0}
STAGES = ("watcher", "parse", "worker")

_TOP = b"From: Alice <alice@example.org>\r\nTo: incoming+bench@example.com\r\nSubject: hello\r\n"
_TAIL = b"Date: Mon, 30 Nov 2026 04:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\n"


def _fill(unit: bytes, size: int) -> bytes:
    return unit * max(1, size // len(unit))


def _message(header: bytes, body: bytes = b"body\r\n") -> bytes:
    """The hostile header first: the reply key, the first From and Message-ID are after it."""
    return header + _TOP + _TAIL + b"\r\n" + body


def _fold(unit: bytes, size: int, per_line: int = 8) -> bytes:
    """``unit`` repeated to ``size`` bytes, folded every ``per_line`` repeats (as mailers fold)."""
    line = unit * per_line
    return b"\r\n ".join([line] * max(1, size // len(line)))


def families(size: int) -> dict[str, tuple[bytes, int]]:
    """name -> (message, bytes of it that are header); each about ``size`` bytes."""
    each = size // 30
    addr = b"someone.else+%d@example.com, "
    quoted = b'"Doe, Jane (%d)" <jane@example.com>, (a comment) x@example.com, '
    out: dict[str, bytes] = {
        "address headers, simple": b"".join(
            b"%s: %s\r\n" % (b"To" if i % 2 else b"Cc", _fold(addr % i, each)) for i in range(30)
        ),
        "address headers, quoted": b"".join(
            b"%s: %s\r\n" % (b"To" if i % 2 else b"Cc", _fold(quoted % i, each)) for i in range(30)
        ),
        "address headers, brackets": b"".join(b"To: %s@example.com\r\n" % (b"<" * each) for _ in range(30)),
        "address headers, no @": b"".join(b"Cc: %s\r\n" % _fold(b"someone.else, ", each) for _ in range(30)),
        "encoded-word Subject": b"Subject: " + _fold(b"=?utf-8?q?caf=C3=A9?= ", size) + b"\r\n",
        "encoded-word From": b"From: " + _fold(b"=?utf-8?b?w6k=?= ", size) + b" <a@example.org>\r\n",
        "huge header line": b"X-Long: " + _fill(b"a", size) + b"\r\n",
        "huge Message-ID": b"Message-ID: <" + _fill(b"a", size) + b"@example.org>\r\n",
        "huge reply key": b"To: incoming+" + _fill(b"k", size) + b"@example.com\r\n",
        "many References": b"References: " + _fold(b"<id-0000@example.org> ", size) + b"\r\n",
        "many headers": b"".join(b"X-H-%d: v\r\n" % i for i in range(size // 14)),
        "Received chain": _fill(b"Received: from a by b for <incoming+x@example.org>; now\r\n", size),
        "bare CR lines": _fill(b"X-A: b\rX-C: d\r\n", size),
        "NUL bytes": b"Subject: "
        + _fill(b"a\x00", size // 2)
        + b"\r\nX-N: "
        + _fill(b"\x00", size // 2)
        + b"\r\n",
    }
    built = {name: (_message(header), len(_message(header)) - 6) for name, header in out.items()}
    depth = max(1, size // 80)
    deep = [b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth)]
    nested = b"".join(deep) + b"Content-Type: text/plain\r\n\r\nin\r\n"
    nested += b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    built["deep MIME nesting"] = (_TOP + _TAIL + nested, len(_TOP + _TAIL))
    parts = b"".join(b"--z\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(size // 50))
    mixed = b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n' + parts + b"--z--\r\n"
    built["many MIME parts"] = (_TOP + _TAIL + mixed, len(_TOP + _TAIL) + 48)
    flood = b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n' + _fill(b"--z\r\n--y\r\n", size)
    built["delimiter lines"] = (_TOP + _TAIL + flood, len(_TOP + _TAIL) + 48)
    filename = _fold(b"=?utf-8?q?caf=C3=A9?= ", size)
    attached = (
        b'Content-Type: multipart/mixed; boundary="z"\r\n\r\n--z\r\nContent-Type: text/plain\r\n\r\nsee\r\n'
        b'--z\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="'
        + filename
        + b'"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + base64.encodebytes(b"x" * 300)
        + b"\r\n--z--\r\n"
    )
    built["encoded-word filename"] = (_TOP + _TAIL + attached, len(_TOP + _TAIL) + 48)
    return built


def plain(total: int, header: int) -> bytes:
    """A plain message of ``total`` bytes, ``header`` of them header: short X- lines, then prose."""
    lines = _fill(b"X-Filler: the quick brown fox jumps over the lazy dog again\r\n", header)
    prose = _fill(b"the build failed again after the merge please look at the logs\r\n", total - header)
    return _TOP + lines + _TAIL + b"\r\n" + prose


def _watcher(raw: bytes) -> None:
    JobPayload.from_message(
        "bench", SourceMessage(MailboxKind.IMAP, 1, raw, len(raw), datetime.now(UTC), epoch=1), TEMPLATE
    )


def _parse(raw: bytes) -> None:
    parse_message(raw, TEMPLATE)


def _worker(raw: bytes) -> None:
    parse_body(raw)


_CALLS: dict[str, Callable[[bytes], None]] = {"watcher": _watcher, "parse": _parse, "worker": _worker}


def _worst(call: Callable[[bytes], None], raw: bytes, rounds: int) -> float:
    worst = 0.0
    for _ in range(rounds):
        started = time.process_time()  # CPU time: the figure other processes on the machine change least
        call(raw)
        worst = max(worst, time.process_time() - started)
    return worst


@dataclass(frozen=True)
class Row:
    family: str
    size: int
    seconds: dict[str, float]  # worst per stage
    plain: dict[str, float]  # the plain twin's worst per stage

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(data["family"], data["size"], data["seconds"], data["plain"])

    def ratio(self, stage: str) -> float:
        return self.seconds[stage] / max(self.plain[stage], 1e-6)

    def budget(self, stage: str) -> float:
        return BUDGET_S_PER_MIB[stage] * max(self.size / MIB, 1.0)

    def over(self) -> list[str]:
        return [
            stage
            for stage in STAGES
            if self.seconds[stage] > self.budget(stage) or self.ratio(stage) > MAX_RATIO
        ]


def run(size: int, rounds: int, say: Callable[[str], None] = lambda _: None) -> list[Row]:
    rows = []
    for family, (raw, header) in families(size).items():
        say(f"hostile: {family}")
        twin = plain(len(raw), header)
        seconds = {stage: _worst(_CALLS[stage], raw, rounds) for stage in STAGES}
        base = {stage: _worst(_CALLS[stage], twin, rounds) for stage in STAGES}
        rows.append(Row(family, len(raw), seconds, base))
    return rows


def table(rows: list[Row]) -> str:
    budget = ", ".join(f"{s} {b * 1000:.0f} ms" for s, b in BUDGET_S_PER_MIB.items())
    lines = [
        f"Hostile mail: worst CPU ms per family, x its plain twin (per MiB: {budget}; x{MAX_RATIO:.0f})",
        "",
        f"  {'family':<28}{'bytes':>10}" + "".join(f"{stage:>22}" for stage in STAGES) + "  verdict",
    ]
    for row in rows:
        cells = "".join(f"{row.seconds[s] * 1000:>10.1f} ms x{row.ratio(s):>7.1f}".rjust(22) for s in STAGES)
        over = row.over()
        lines.append(
            f"  {row.family:<28}{row.size:>10}{cells}  {'OVER: ' + ','.join(over) if over else 'ok'}"
        )
    return "\n".join(lines)


def as_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [
        {"family": r.family, "size": r.size, "seconds": r.seconds, "plain": r.plain, "over": r.over()}
        for r in rows
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2 * MIB, help="bytes per hostile message (default 2 MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per message; the worst counts")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    rows = run(args.size, args.rounds, lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True))
    print(json.dumps(as_json(rows), indent=1) if args.json else table(rows))
    return 1 if any(row.over() for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
