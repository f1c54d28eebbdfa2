"""Outbound mail: the half of the loop the application sends, so that replies come back with a key.

reply_address(key, template)  the From/Reply-To address: the mailbox's address template filled in
message_id(key, host)         "<reply-KEY@host>": the Message-ID replies quote in References, the
                              fallback mailroom reads the key from when the address was lost
Mailer(smtp, suppressions).send(message)
                              authenticated SMTP (STARTTLS, TLS or plain on loopback) that refuses
                              the whole message if any recipient is suppressed
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import getaddresses

import structlog

from mailroom.config import Security, SmtpConfig
from mailroom.keys import AddressTemplate, reply_message_id
from mailroom.provider.errors import SmtpError, SuppressedRecipientError
from mailroom.provider.suppression import SuppressionList

log = structlog.get_logger("mailroom.provider.outbound")

_FORBIDDEN_IN_KEY = frozenset('@<>,;:"()[]\\')


def _check_key(key: str) -> str:
    if not key or any(ch.isspace() or ch in _FORBIDDEN_IN_KEY for ch in key):
        raise ValueError(f"reply key {key!r} must be non-empty, without whitespace, @, <, >, or quotes")
    return key


def reply_address(key: str, template: str | AddressTemplate) -> str:
    """``incoming+%{key}@example.com`` and ``abc`` -> ``incoming+abc@example.com``."""
    if isinstance(template, str):
        template = AddressTemplate.parse(template)
    return template.fill(_check_key(key))


def message_id(key: str, host: str) -> str:
    """The Message-ID header value, angle brackets included: ``<reply-KEY@host>``."""
    if not host or "@" in host or any(ch.isspace() or ch in "<>" for ch in host):
        raise ValueError(f"host {host!r} must be a host name")
    return f"<{reply_message_id(_check_key(key), host)}>"


def recipients(message: EmailMessage) -> list[str]:
    """Every address in To, Cc and Bcc."""
    values = [str(v) for name in ("To", "Cc", "Bcc") for v in message.get_all(name, [])]
    return [addr for _, addr in getaddresses(values) if addr]


class Mailer:
    """Sends messages over the configured SMTP server, never to a suppressed address."""

    def __init__(self, smtp: SmtpConfig, suppressions: SuppressionList | None) -> None:
        self.smtp = smtp
        self.suppressions = suppressions

    def send(self, message: EmailMessage) -> None:
        """Send ``message`` (From defaults to ``smtp.from_address``; Bcc is not transmitted).

        Raises SuppressedRecipientError before connecting if any recipient is suppressed, and
        SmtpError if the server cannot be reached or refuses the message.
        """
        to = recipients(message)
        if not to:
            raise ValueError("the message has no recipients (To, Cc or Bcc)")
        if self.suppressions is not None:
            blocked = self.suppressions.suppressed(to)
            if blocked:
                raise SuppressedRecipientError(blocked)
        if "From" not in message:
            message["From"] = self.smtp.from_address
        try:
            with self._connect() as client:
                client.send_message(message, from_addr=self.smtp.from_address, to_addrs=to)
        except (smtplib.SMTPException, OSError) as exc:
            raise SmtpError(
                f"smtp {self.smtp.host}:{self.smtp.effective_port}: {type(exc).__name__}: {exc}"
            ) from exc
        log.info("mail_sent", recipients=len(to), message_id=message.get("Message-ID"))

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.smtp.ca_file) if self.smtp.ca_file else None)
        if not self.smtp.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> smtplib.SMTP:
        smtp = self.smtp
        client: smtplib.SMTP
        if smtp.security is Security.TLS:
            client = smtplib.SMTP_SSL(
                smtp.host, smtp.effective_port, timeout=smtp.timeout, context=self._context()
            )
        else:
            client = smtplib.SMTP(smtp.host, smtp.effective_port, timeout=smtp.timeout)
        try:
            client.ehlo()
            if smtp.security is Security.STARTTLS:
                client.starttls(context=self._context())
                client.ehlo()
            password = smtp.read_password()
            if smtp.username is not None and password is not None:
                client.login(smtp.username, password)
        except BaseException:
            client.close()
            raise
        return client
