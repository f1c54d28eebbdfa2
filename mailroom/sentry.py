"""Errors to Sentry, when a DSN is set (``sentry_dsn`` in the config, or the ``SENTRY_DSN`` variable).

Nothing secret leaves the process: local variables are not sent at all, and ``scrub`` (the
``before_send`` hook) drops every field whose name says it holds a secret or the message (``raw``,
``body``, ``password``, ``token`` ...), masks passwords in URLs, and replaces any known secret value
(the mailboxes' passwords, the webhook key) wherever it appears. The mailbox, reply key and Message-ID
are copied from the RQ job to tags (before scrubbing) so an error can be found from its message.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, SecretStr

from mailroom.config import Settings, read_secret_file

FILTERED = "[Filtered]"
_SECRET_NAMES = re.compile(
    r"password|passwd|secret|token|authorization|cookie|api_?key|dsn|credential|raw|body", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.IGNORECASE)

Event = dict[str, Any]


def scrub(event: Event, secrets: Iterable[str] = ()) -> Event:
    """The event with secrets and message contents removed (pure; the hook calls it)."""
    values = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
    cleaned: Event = _clean(event, values)
    return cleaned


def _clean(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, dict):
        return {
            key: FILTERED if isinstance(key, str) and _SECRET_NAMES.search(key) else _clean(item, secrets)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_clean(item, secrets) for item in value]
    if isinstance(value, str):
        text = _URL_PASSWORD.sub(r"\g<scheme>\g<user>:" + FILTERED + "@", value)
        for secret in secrets:
            text = text.replace(secret, FILTERED)
        return text
    if isinstance(value, (bytes, bytearray)):
        return FILTERED  # message bytes, or something like them
    return value


def known_secrets(settings: Settings) -> list[str]:
    """The secret values this configuration can put in memory (read now; rotated ones are re-read):
    every SecretStr field and every secret file (``*_file`` but ``ca_file``), in any section."""
    found: list[str] = []

    def walk(model: BaseModel) -> None:
        for name, value in model:
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, Path) and name.endswith("_file") and name != "ca_file":
                try:
                    found.append(read_secret_file(value))
                except (OSError, UnicodeDecodeError):
                    pass
            elif isinstance(value, BaseModel):
                walk(value)
            elif isinstance(value, tuple | list):
                for item in value:
                    if isinstance(item, BaseModel):
                        walk(item)

    walk(settings)
    return found


def before_send(settings: Settings) -> Callable[[Event, Any], Event | None]:
    def hook(event: Event, hint: Any) -> Event | None:
        return scrub(tag_job(event), known_secrets(settings))

    return hook


def init(settings: Settings, component: str, with_rq: bool = False, **options: Any) -> bool:
    """Start the Sentry client if a DSN is configured (config or SENTRY_DSN). True when it is on."""
    dsn = settings.sentry_dsn.get_secret_value() if settings.sentry_dsn is not None else None
    if not (dsn or os.environ.get("SENTRY_DSN")):
        return False  # and sentry_sdk (~20 MB) is never imported
    import sentry_sdk

    integrations: list[Any] = []
    if with_rq:
        from sentry_sdk.integrations.rq import RqIntegration

        integrations.append(RqIntegration())
    sentry_sdk.init(
        dsn=dsn,  # None: sentry_sdk reads SENTRY_DSN itself, and stays off without it
        before_send=cast(Any, before_send(settings)),
        include_local_variables=False,
        max_request_body_size="never",
        integrations=integrations,
        **options,
    )
    sentry_sdk.set_tag("component", component)
    return sentry_sdk.get_client().is_active()


def tag_message(mailbox: str, reply_key: str | None, message_id: str | None) -> None:
    """Tag the current scope (the job's own: Sentry's RQ integration opens one per job) with the
    message's mailbox, reply key and Message-ID. The event's copy of the job's arguments, which
    ``tag_job`` reads, is only there when sending personal data is on; these tags always are. Nothing
    (not even an import) when Sentry is off."""
    sentry_sdk = sys.modules.get("sentry_sdk")
    if sentry_sdk is None or not sentry_sdk.get_client().is_active():
        return
    for tag, value in (("mailbox", mailbox), ("reply_key", reply_key), ("message_id", message_id)):
        if value:
            sentry_sdk.set_tag(tag, value[:200])


def tag_job(event: Event) -> Event:
    """Copy the mailbox, reply key, Message-ID and job id of the RQ job (RQ integration's extra) to tags."""
    job = (event.get("extra") or {}).get("rq-job") or {}
    args = job.get("args") or []
    payload = args[0] if args and isinstance(args[0], dict) else {}
    tags = dict(event.get("tags") or {})
    for tag, value in (
        ("mailbox", payload.get("mailbox")),
        ("reply_key", payload.get("key")),
        ("message_id", payload.get("message_id")),
        ("job_id", job.get("job_id")),
    ):
        if isinstance(value, str) and value:
            tags[tag] = value[:200]
    return {**event, "tags": tags}
