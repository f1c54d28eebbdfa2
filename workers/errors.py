"""What a handler raises to tell the worker how a failure should be treated.

HandlerError
├── TransientHandlerError   try again later (RQ Retry with the mailbox's delays); the default for any
│                           other exception too
└── PermanentHandlerError   no retry: the job goes straight to the failed registry, raw bytes intact
    └── RejectMessage       no retry, and the sender may get a rejection reply (see rejections.py)
"""

from __future__ import annotations


class HandlerError(Exception):
    """Base class for handler failures."""


class TransientHandlerError(HandlerError):
    """A failure that may succeed later (the application is down, a timeout, HTTP 5xx)."""


class PermanentHandlerError(HandlerError):
    """A failure that retrying cannot fix (HTTP 4xx, a message the application refuses)."""


class RejectMessage(PermanentHandlerError):
    """The application refuses the message for a reason the sender should hear about.

    ``reason`` is ``unknown_key`` (the conversation is unknown or closed) or ``sender_not_allowed``;
    ``detail`` (optional, short, no secrets) is added to the rejection reply.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"rejected: {reason}" + (f" ({detail})" if detail else ""))
