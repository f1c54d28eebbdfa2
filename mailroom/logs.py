"""Structured logs: one JSON object per line on stdout (readable key=value on a terminal).

Events are snake_case facts with the mailbox and message ids bound. Never a body, password or token:
``redact`` drops any field whose name says it holds a secret, as a second line of defence.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping, Sequence
from functools import cache
from types import TracebackType
from typing import Any, TextIO

import structlog

from mailroom import terminal

_SECRET_WORDS = ("password", "secret", "token", "authorization", "raw", "body")


@cache
def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event):
        if _is_secret(name):
            event[name] = "[redacted]"
    return event


def timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["timestamp"] = _now()
    return event


def _now() -> str:
    """``2026-11-25T14:50:37.785577Z``, as structlog's TimeStamper(fmt="iso", utc=True) writes it, in a
    third of its time: the watcher logs a line per message."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


_ENCODER = json.JSONEncoder(default=repr)  # one encoder for every line, not one per json.dumps call


def _dumps(event: Any, **_: Any) -> str:
    return _ENCODER.encode(event)


class _Output:
    """What configure() chose, for info_many()."""

    json = False
    info = True
    stream: TextIO | None = None  # None: stdout as it is when a line is written


def info_many(context: Mapping[str, Any], events: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Log several info events at once: the watcher's line per message, a batch at a time.

    In JSON mode the lines are rendered here exactly as the configured processors would render them
    (the context, the fields, then event, level and timestamp; secrets redacted), with one timestamp
    and one write for the batch: a third of the cost of a structlog call per line.
    tests/unit/test_logs.py holds the two renderings to each other. Otherwise, one structlog call each.
    """
    if not _Output.info:
        return
    if not _Output.json:
        log = structlog.get_logger("mailroom").bind(**context)
        for name, fields in events:
            log.info(name, **fields)
        return
    stamp = _now()
    lines = []
    for name, fields in events:
        record: dict[str, Any] = {**context, **fields, "event": name, "level": "info", "timestamp": stamp}
        lines.append(_ENCODER.encode(redact(None, "info", record)))
    if lines:  # structlog's own printer, for its per-file lock; stdout as it is now, as structlog prints
        structlog.PrintLogger(_Output.stream or sys.stdout).msg("\n".join(lines))


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Logs as ``fmt`` at ``level`` and above, on stdout (a service's stdout is its log) or ``stream``
    (a command whose stdout is its output, such as ``check --json``, logs on stderr)."""
    out = stream or sys.stdout
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps) if use_json else structlog.dev.ConsoleRenderer()
    )
    numeric_level = getattr(logging, level.upper())
    _Output.json, _Output.info, _Output.stream = use_json, numeric_level <= logging.INFO, stream
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamp,
            redact,
            structlog.processors.format_exc_info,
            *(() if use_json else (terminal.sanitize_values,)),  # JSON escapes control characters itself
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    # Library logs (RQ's worker lines) go through stdlib logging, to stderr, at our level: in JSON mode
    # one JSON object per line as well, and Python's warnings and uncaught exceptions with them.
    _library_logs(use_json, max(numeric_level, logging.INFO))
    # imaplib's debug output can echo credentials, and httpx logs each request with its URL (a token in
    # the query of a webhook URL, `mailroom check` probes it) at INFO: keep them off whatever the level.
    for name in ("imapclient", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class JsonLines(logging.Formatter):
    """A stdlib record as the JSON line structlog would print: the message as ``event``, with
    ``level``, ``logger`` and ``timestamp`` (RQ's colour codes removed, an exception as text)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "event": _ANSI.sub("", record.getMessage()),
            "level": record.levelname.lower(),
            "logger": record.name,
            "timestamp": _now(),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(redact(None, event["level"], event))


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler configure() installs (and replaces on the next call)."""


class _JsonHandler(_Handler):
    """JSON mode: each record as one line through structlog's printer, on the stream structlog writes
    to and under its lock, so a library's line never interleaves with ours (stdout and stderr are
    often the same file, and print() writes a line and its newline separately)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.PrintLogger(_Output.stream or sys.stdout).msg(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def _library_logs(use_json: bool, level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _JsonHandler() if use_json else _Handler(sys.stderr)
    handler.setFormatter(JsonLines() if use_json else logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(use_json)
    if use_json:
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread


def _uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("mailroom").critical("uncaught_exception", exc_info=(kind, value, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger("mailroom").error(
        "uncaught_exception_in_thread %s",
        thread,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
