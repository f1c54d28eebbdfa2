"""The seam every mail source implements: what a fetched message is, and where it goes.

A source (an IMAP folder, a Microsoft Graph mailbox, ...) fetches messages as :class:`SourceMessage`
values and hands each batch to a :data:`Sink`, which enqueues it; the source marks the batch done on the
server only when the sink returns. Nothing here knows Redis, IMAP or HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from mailroom.config import MailboxKind

# A source's own id for a message (an IMAP UID, a Graph immutable id): what it marks the message by.
Ref = TypeVar("Ref", int, str)


@dataclass(frozen=True, slots=True)
class SourceMessage(Generic[Ref]):
    """One message as its source holds it. ``raw`` is the whole message, or only its header when
    ``truncated`` (larger than max_message_size; ``size`` is then the whole message's size)."""

    kind: MailboxKind
    ref: Ref
    raw: bytes
    size: int
    received_at: datetime | None  # when the server received it (IMAP INTERNALDATE, Graph receivedDateTime)
    truncated: bool = False
    # Where refs are reused (IMAP: UIDs are unique only within one UIDVALIDITY), the era the ref belongs
    # to; None for sources whose refs are never reused.
    epoch: int | None = None


# Takes a batch, returns when every message of it is safely queued; raises (EnqueueError) otherwise.
Sink = Callable[[Sequence[SourceMessage[Any]]], None]
