"""The job payload: what the watcher puts on the queue and the worker takes off it. Pure, no I/O.

Version 1 is a JSON object (RQ's JSON serializer stores it as the job's only argument):

    {"v": 1, "mailbox": "support", "source": "imap", "uidvalidity": 1712, "uid": 42,
     "received_at": "2026-11-25T12:00:00+00:00", "size": 4211, "truncated": false,
     "message_id": "...", "key": "abc", "key_header": "To", "from": "...", "subject": "...",
     "auto_reply": false, "bounce": false, "parse_error": null,
     "raw": "<the message bytes, base64>"}

``raw`` is the message exactly as the server held it; ``truncated`` marks a message over the size limit
of which only the header was kept.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mailroom.keys import AddressTemplate
from mailroom.message import parse_message

if TYPE_CHECKING:
    from mailroom.source import SourceMessage

SCHEMA_VERSION = 1


class PayloadError(ValueError):
    """The job's data is not a mailroom payload this version understands."""


@dataclass(frozen=True)
class JobPayload:
    mailbox: str
    source: str  # the source's kind ("imap", "graph"), or "inject"
    uidvalidity: int | None  # the message's epoch (IMAP UIDVALIDITY); None where ids are never reused
    uid: int | str | None  # the source's ref: an IMAP UID, a Graph immutable id
    received_at: str
    size: int
    truncated: bool
    message_id: str | None
    key: str | None
    key_header: str | None
    from_address: str | None
    subject: str | None
    auto_reply: bool
    bounce: bool
    parse_error: str | None
    raw: bytes

    @classmethod
    def from_message(cls, mailbox: str, message: SourceMessage[Any], template: AddressTemplate) -> JobPayload:
        """Parse the header (never raises) and build the job payload around the untouched bytes."""
        parsed = parse_message(message.raw, template, recipients=False)
        parse_error = parsed.parse_error
        if message.truncated:
            cut = f"message is {message.size} bytes, over max_message_size: only its header was kept"
            parse_error = f"{cut}; {parse_error}" if parse_error else cut  # the parser's reason stays
        received = message.received_at or datetime.now(UTC)
        if received.tzinfo is None:
            received = received.replace(tzinfo=UTC)
        return cls(
            mailbox=mailbox,
            source=str(message.kind),
            uidvalidity=message.epoch,
            uid=message.ref,
            received_at=received.isoformat(),
            size=message.size,
            truncated=message.truncated,
            message_id=_utf8(parsed.message_id),
            key=_utf8(parsed.key),
            key_header=parsed.key_header,
            from_address=_utf8(parsed.from_address),
            subject=_utf8(parsed.subject),
            auto_reply=parsed.auto_reply,
            bounce=parsed.bounce,
            parse_error=_utf8(parse_error),
            raw=message.raw,
        )

    @property
    def source_id(self) -> str:
        """The message's identity within its mailbox (the idempotency guard's): ``1712:42`` for IMAP UID
        42 of UIDVALIDITY 1712, ``graph:<id>`` where ids have no epoch."""
        if self.uidvalidity is None:
            return f"{self.source}:{self.uid}"
        return f"{self.uidvalidity}:{self.uid}"

    def to_json(self) -> dict[str, Any]:
        # Field by field rather than dataclasses.asdict(), which deep-copies the message bytes.
        data: dict[str, Any] = {"v": SCHEMA_VERSION}
        for name in _FIELD_NAMES:
            data[name] = getattr(self, name)
        data["from"] = data.pop("from_address")
        data["raw"] = base64.b64encode(self.raw).decode("ascii")
        return data

    def to_json_bytes(self) -> bytes:
        """``json.dumps(self.to_json())`` as bytes."""
        return b"".join(self.json_parts())

    def json_parts(self) -> tuple[bytes, bytes, bytes]:
        """:meth:`to_json_bytes` in three pieces, the middle one the message's Base64, for the caller to
        join with its own framing: a 25 MiB message then costs one Base64 copy and one join, not the
        three copies of going through a str, nor a second join."""
        head = {"v": SCHEMA_VERSION}
        for name in _FIELD_NAMES:
            if name != "raw":
                head[name] = getattr(self, name)
        head["from"] = head.pop("from_address")
        return json.dumps(head)[:-1].encode() + b', "raw": "', base64.b64encode(self.raw), b'"}'

    @classmethod
    def from_json(cls, data: Any) -> JobPayload:
        if not isinstance(data, dict):
            raise PayloadError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("v") != SCHEMA_VERSION:
            raise PayloadError(f"unsupported payload version {data.get('v')!r}")
        fields = dict(data)
        fields.pop("v")
        fields["from_address"] = fields.pop("from", None)
        try:
            fields["raw"] = base64.b64decode(fields["raw"], validate=True)
            return cls(**fields)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise PayloadError(f"malformed payload: {exc}") from exc

    def summary(self) -> dict[str, Any]:
        """The payload without the message bytes: for logs, listings and Sentry tags."""
        data = self.to_json()
        del data["raw"]
        return data


def _utf8(text: str | None) -> str | None:
    """Text Redis can store: a lone surrogate from hostile mail would make every enqueue of the batch
    fail, and the watcher offer the same batch for ever."""
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


_FIELD_NAMES = tuple(field.name for field in fields(JobPayload))
