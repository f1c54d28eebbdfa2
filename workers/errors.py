"""What a handler raises to tell the worker how a failure should be treated.

HandlerError
├── TransientHandlerError   try again later (RQ Retry with the mailbox's delays); the default for any
│                           other exception too
└── PermanentHandlerError   no retry: the job goes straight to the failed registry, raw bytes intact
"""

from __future__ import annotations


class HandlerError(Exception):
    """Base class for handler failures."""


class TransientHandlerError(HandlerError):
    """A failure that may succeed later (the application is down, a timeout, HTTP 5xx)."""


class PermanentHandlerError(HandlerError):
    """A failure that retrying cannot fix (HTTP 4xx, a message the application refuses)."""
