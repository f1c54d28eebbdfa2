"""The default handler: one JSON log line per message. Never the body."""

from __future__ import annotations

import structlog

from workers.incoming import IncomingEmail

log = structlog.get_logger("mailroom.handler.log")


def handle(email: IncomingEmail) -> None:
    log.info(
        "email_received",
        mailbox=email.mailbox,
        message_id=email.message_id,
        reply_key=email.key,
        key_header=email.key_header,
        sender=email.from_address,
        subject=email.subject,
        auto_reply=email.auto_reply,
        bounce=email.bounce,
        parse_error=email.parse_error,
        size=len(email.raw),
    )
