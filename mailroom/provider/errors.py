"""Errors of the provider side.

MailroomError
└── ProviderError
    ├── SuppressedRecipientError  send() refused: a recipient is on the suppression list
    └── SmtpError                 the SMTP server refused us or the connection failed
"""

from __future__ import annotations

from collections.abc import Sequence

from mailroom.errors import MailroomError


class ProviderError(MailroomError):
    """Base class of the provider side's errors."""


class SuppressedRecipientError(ProviderError):
    """The message was not sent: these recipients are suppressed (bounced, complained, unsubscribed)."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = tuple(addresses)
        super().__init__(
            "not sent: suppressed recipient(s) "
            + ", ".join(self.addresses)
            + " (see `mailroom suppressions show ADDRESS`)"
        )


class SmtpError(ProviderError):
    """Connecting, STARTTLS, AUTH or the transaction failed."""
