"""Text from mail, made safe for a terminal. Pure, no I/O.

A Subject carrying ``ESC[2K ESC[1A`` (erase the line, move up) rewrote an operator's screen when a console
log printed it. :func:`sanitize` shows every character that is not printable as its escape (``\\x1b``),
so the text stays readable and nothing in it reaches the terminal as a command. JSON output needs none
of this: its encoder escapes control characters already.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

__all__ = ["sanitize", "sanitize_values"]

# Keys whose text is several lines on purpose (a traceback): their line breaks stay.
_MULTILINE_KEYS = frozenset({"exception", "stack"})


def sanitize(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with each non-printable character (C0 and C1 controls, DEL, bidi overrides, unassigned...)
    written as its Python escape; ``keep_newlines`` keeps line breaks (and tabs) as they are."""
    if text.isprintable():
        return text
    keep = "\n\t" if keep_newlines else ""
    return "".join(
        c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii") for c in text
    )


def sanitize_values(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor for console logs: every str value sanitized (tracebacks keep their lines)."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = sanitize(value, keep_newlines=key in _MULTILINE_KEYS)
    return event
