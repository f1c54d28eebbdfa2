"""``mailroom inject``: enqueue a raw message from a file exactly as the watcher would.

The job's source is ``inject`` and its id comes from the SHA-256 of the bytes, so injecting the same
message twice into one mailbox makes one job (the same guard as the watcher's); ``force`` uses a random
id instead, for a deliberate second run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid

from mailroom.app import to_payload
from mailroom.config import MailboxConfig
from mailroom.imap.session import FetchedMessage
from mailroom.keys import AddressTemplate
from mailroom.queue import Enqueued, MailQueue


def inject(queue: MailQueue, mailbox: MailboxConfig, raw: bytes, force: bool = False) -> Enqueued:
    ident = uuid.uuid4().hex if force else hashlib.sha256(raw).hexdigest()[:32]
    fetched = FetchedMessage(uidvalidity=0, uid=0, raw=raw, size=len(raw), internaldate=None)
    payload = to_payload(mailbox.name, fetched, AddressTemplate.parse(mailbox.address), source="inject")
    payload = dataclasses.replace(payload, uidvalidity=None, uid=ident)
    (result,) = queue.enqueue_batch(mailbox, [payload])
    return result
