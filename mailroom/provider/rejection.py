"""Rejection replies: a short email telling a sender why their message was not handled.

Sent by the worker (``workers/rejections.py``) for the configured reasons, over the ``smtp`` section's
server, to the envelope sender (``Return-Path``, RFC 3834 section 4), with ``In-Reply-To``/``References``
pointing at the rejected message and ``Auto-Submitted: auto-replied`` so that well-behaved
auto-responders do not answer back. It never echoes the sender's Subject or body: a reply is no relay.

Never sent (the rejection is only recorded: a log line and a metric with the outcome) when rejections are
off (the default), when the message is itself an auto-reply or a bounce, when it has no envelope sender,
when the receiving server does not vouch for that sender (an ``Authentication-Results`` header of one of
``rejections.trusted_authserv_ids`` showing SPF or DKIM passing for it, see
:mod:`mailroom.provider.authresults`: otherwise a forged sender would make mailroom mail a third party,
backscatter), when the sender is suppressed or is our own address, and at most once per sender and reason
per ``once_per`` seconds (a day by default; Discourse's rule), claimed with ``SET NX EX`` in Redis before
sending, so concurrent workers cannot both send.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from enum import StrEnum

import redis
import structlog

from mailroom.config import RejectionReason, Settings
from mailroom.message import header_fields
from mailroom.provider.authresults import vouch
from mailroom.provider.errors import ProviderError
from mailroom.provider.metrics import REJECTIONS_SENT, REJECTIONS_SKIPPED
from mailroom.provider.outbound import Mailer
from mailroom.provider.suppression import SuppressionList, normalise
from mailroom.schema import JobPayload

log = structlog.get_logger("mailroom.provider.rejection")

SENT_PREFIX = "mailroom:rejection:"

TEXTS: dict[str, str] = {
    "no_key": (
        "Your message could not be delivered: it was sent to an address that does not belong to any\n"
        "conversation. Please reply to a notification email instead of writing to this address."
    ),
    "unknown_key": (
        "Your message could not be delivered: the conversation it replies to is unknown or no longer\n"
        "accepts replies."
    ),
    "sender_not_allowed": (
        "Your message could not be delivered: the address you sent it from is not allowed to reply\n"
        "to this conversation."
    ),
    "too_large": "Your message could not be delivered: it is larger than this service accepts.",
}


class Outcome(StrEnum):
    SENT = "sent"
    DISABLED = "disabled"
    REASON_OFF = "reason_off"
    AUTOMATED = "auto_reply_or_bounce"
    NO_SENDER = "no_sender"
    UNAUTHENTICATED = "sender_not_authenticated"
    OWN_ADDRESS = "own_address"
    SUPPRESSED = "suppressed"
    ALREADY_SENT = "already_sent"
    FAILED = "failed"


def build(
    payload: JobPayload, reason: str, from_address: str, host: str, detail: str | None, to: str | None = None
) -> EmailMessage:
    """The rejection reply to ``payload``, addressed ``to`` (the envelope sender; default the From
    address). Pure. Nothing of the sender's text is in it: not the Subject, not the body."""
    recipient = to or payload.from_address
    assert recipient is not None
    message = EmailMessage()
    message["From"] = from_address
    message["To"] = recipient
    message["Subject"] = "Message not delivered"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(idstring="rejection", domain=host)
    if payload.message_id:
        message["In-Reply-To"] = f"<{payload.message_id}>"
        message["References"] = f"<{payload.message_id}>"
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"  # Exchange: no out-of-office answer to this
    message["X-Mailroom-Rejection"] = reason
    body = TEXTS.get(reason, "Your message could not be delivered.")
    if detail:
        body += "\n\n" + detail.strip()[:500]
    message.set_content(body + "\n")
    return message


class Rejector:
    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        self.config = settings.rejections
        self.smtp = settings.smtp
        self._redis = connection
        self.suppressions = SuppressionList(connection)
        self.mailer = Mailer(self.smtp, self.suppressions) if self.smtp is not None else None

    def reject(self, payload: JobPayload, reason: RejectionReason, detail: str | None = None) -> Outcome:
        """Send the rejection for ``payload`` if every rule allows it; what happened, for logs and tests."""
        outcome, why = self._reject(payload, reason, detail)
        if outcome is Outcome.SENT:
            REJECTIONS_SENT.labels(reason).inc()
        else:
            REJECTIONS_SKIPPED.labels(outcome.value).inc()
        log.info("rejection", reason=reason, outcome=outcome.value, why=why, message_id=payload.message_id)
        return outcome

    def _reject(
        self, payload: JobPayload, reason: RejectionReason, detail: str | None
    ) -> tuple[Outcome, str | None]:
        outcome = self._rules(payload, reason)
        if outcome is not None:
            return outcome, None
        vouched = vouch(header_fields(payload.raw), self.config.trusted_authserv_ids)
        try:
            sender = normalise(vouched.sender or "")
        except ValueError:
            return Outcome.NO_SENDER, vouched.why
        if vouched.method is None:
            return Outcome.UNAUTHENTICATED, vouched.why
        return self._send(payload, reason, detail, sender), vouched.why

    def _rules(self, payload: JobPayload, reason: RejectionReason) -> Outcome | None:
        if not self.config.enabled or self.mailer is None or self.smtp is None:
            return Outcome.DISABLED
        if reason not in self.config.reasons:
            return Outcome.REASON_OFF
        if payload.auto_reply or payload.bounce:
            return Outcome.AUTOMATED
        return None

    def _send(self, payload: JobPayload, reason: RejectionReason, detail: str | None, sender: str) -> Outcome:
        assert self.smtp is not None and self.mailer is not None
        if sender == normalise(self.smtp.from_address):
            return Outcome.OWN_ADDRESS
        if self.suppressions.is_suppressed(sender):
            return Outcome.SUPPRESSED
        claim = f"{SENT_PREFIX}{reason}:{sender}"
        if not self._redis.set(claim, "1", nx=True, ex=self.config.once_per):
            return Outcome.ALREADY_SENT
        host = self.config.message_id_host or self.smtp.from_address.rpartition("@")[2]
        try:
            self.mailer.send(build(payload, reason, self.smtp.from_address, host, detail, to=sender))
        except ProviderError as exc:
            # Let a later message try again rather than staying silent for a day.
            self._redis.delete(claim)
            log.warning("rejection_failed", reason=reason, error=str(exc))
            return Outcome.FAILED
        return Outcome.SENT
