"""``mailroom inject``: enqueue a raw message from a file exactly as the watcher would.

The job's source is ``inject`` and its id comes from the SHA-256 of the bytes, so injecting the same
message twice into one mailbox makes one job (the same guard as the watcher's); ``force`` uses a random
id instead, for a deliberate second run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mailroom.config import MailboxConfig
from mailroom.keys import AddressTemplate
from mailroom.mailfiles import MailFileError, MessageRef, Reader
from mailroom.queue import Enqueued, MailQueue
from mailroom.schema import JobPayload
from mailroom.source import SourceMessage


def inject(queue: MailQueue, mailbox: MailboxConfig, raw: bytes, force: bool = False) -> Enqueued:
    ident = uuid.uuid4().hex if force else hashlib.sha256(raw).hexdigest()[:32]
    message = SourceMessage(mailbox.kind, ident, raw, len(raw), received_at=None)
    payload = JobPayload.from_message(mailbox.name, message, AddressTemplate.parse(mailbox.address))
    (result,) = queue.enqueue_batch(mailbox, [dataclasses.replace(payload, source="inject")])
    return result


@dataclass(frozen=True)
class Injected:
    """One message of ``inject_many``: enqueued (``new``), already queued, or not readable (``error``)."""

    source: str
    mailbox: str
    queue: str
    job_id: str | None = None
    new: bool = False
    key: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        state = "error" if self.error else "queued" if self.new else "already_queued"
        return {
            "source": self.source,
            "state": state,
            "job_id": self.job_id,
            "mailbox": self.mailbox,
            "queue": self.queue,
            "key": self.key,
            "error": self.error,
        }


def inject_many(
    queue: MailQueue, mailbox: MailboxConfig, refs: Sequence[MessageRef], force: bool = False
) -> Iterator[Injected]:
    """Inject each message the refs point at (files, mbox messages, stdin), one at a time."""
    reader = Reader()
    try:
        for ref in refs:
            base = Injected(source=ref.label, mailbox=mailbox.name, queue=mailbox.queue)
            try:
                raw = reader.read(ref)
            except MailFileError as exc:
                yield dataclasses.replace(base, error=str(exc))
                continue
            if not raw:
                yield dataclasses.replace(base, error=f"{ref.label} is empty")
                continue
            result = inject(queue, mailbox, raw, force=force)
            yield dataclasses.replace(base, job_id=result.job_id, new=result.new, key=result.payload.key)
    finally:
        reader.close()
