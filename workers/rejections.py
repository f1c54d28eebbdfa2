"""The worker's hook for rejection replies (``mailroom.provider.rejection``).

``handle_email`` calls :func:`reject` when a message cannot be handled for a known reason. It never
raises: a rejection is a courtesy, and failing to send one must not change what happens to the job.
"""

from __future__ import annotations

from functools import cache
from typing import cast, get_args

import structlog

from mailroom.config import RejectionReason, Settings
from mailroom.provider.rejection import Outcome, Rejector
from mailroom.redis_client import connect
from mailroom.schema import JobPayload

log = structlog.get_logger("mailroom.worker")

REASONS: frozenset[str] = frozenset(get_args(RejectionReason))


@cache
def _rejector(settings: Settings) -> Rejector:
    return Rejector(settings, connect(settings.redis_url))  # timeouts, Sentinel URLs


def reject(settings: Settings, payload: JobPayload, reason: str, detail: str | None = None) -> Outcome:
    """Send the rejection reply if the configuration and the rules allow it."""
    if not settings.rejections.enabled:
        return Outcome.DISABLED
    if reason not in REASONS:
        log.warning("rejection_unknown_reason", reason=reason)
        return Outcome.REASON_OFF
    try:
        return _rejector(settings).reject(payload, cast(RejectionReason, reason), detail)
    except Exception as exc:  # noqa: BLE001 - a reply is a courtesy: it never changes how the job ends
        log.warning("rejection_failed", reason=reason, error=f"{type(exc).__name__}: {exc}")
        return Outcome.FAILED
