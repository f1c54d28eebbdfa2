"""IncomingEmail: what a handler receives. The raw bytes, the fields parsed by the watcher, and the body
parsed on first use (the watcher only reads headers; the full MIME parse happens here, in the worker)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from mailroom.message import MessageBody, parse_body
from mailroom.schema import JobPayload


@dataclass(frozen=True)
class IncomingEmail:
    payload: JobPayload

    @property
    def raw(self) -> bytes:
        return self.payload.raw

    @property
    def mailbox(self) -> str:
        return self.payload.mailbox

    @property
    def key(self) -> str | None:
        return self.payload.key

    @property
    def key_header(self) -> str | None:
        return self.payload.key_header

    @property
    def message_id(self) -> str | None:
        return self.payload.message_id

    @property
    def from_address(self) -> str | None:
        return self.payload.from_address

    @property
    def subject(self) -> str | None:
        return self.payload.subject

    @property
    def auto_reply(self) -> bool:
        return self.payload.auto_reply

    @property
    def bounce(self) -> bool:
        return self.payload.bounce

    @property
    def parse_error(self) -> str | None:
        return self.payload.parse_error

    @cached_property
    def body(self) -> MessageBody:
        return parse_body(self.payload.raw)
