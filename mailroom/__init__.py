"""mailroom: incoming email becomes application work (IMAP or Microsoft Graph -> RQ jobs -> handlers).

The public handler API is importable from here, so an application never imports the generic top-level
name ``workers``::

    from mailroom import IncomingEmail, PermanentHandlerError, RejectMessage, TransientHandlerError

They live in the worker side (workers/) and load on first use, so the watcher, which never runs a
handler, never imports the worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.errors import PermanentHandlerError, RejectMessage, TransientHandlerError
    from workers.incoming import IncomingEmail

__all__ = ["IncomingEmail", "PermanentHandlerError", "RejectMessage", "TransientHandlerError"]

_PUBLIC = {
    "IncomingEmail": "workers.incoming",
    "PermanentHandlerError": "workers.errors",
    "RejectMessage": "workers.errors",
    "TransientHandlerError": "workers.errors",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'mailroom' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value
