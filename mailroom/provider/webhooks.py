"""The webhook Mailgun calls when mail is delivered, delayed, refused or complained about.

Only the provider can feed it: every request must carry a valid signature (Mailgun's scheme, "Securing
webhooks": hex HMAC-SHA256 of ``timestamp + token`` keyed with the webhook signing key), a timestamp
within ``timestamp_tolerance`` of now, and a token not seen before (remembered in Redis for
``replay_ttl`` seconds, longer than the window in which a timestamp is accepted). Anything else gets
404 with an empty body, is counted in ``mailroom_provider_webhook_rejected_total{reason}`` and is never
processed. Authentication rests on the signature alone: the client's IP (and any proxy header) is not
looked at, so the endpoint works the same behind a load balancer.

A key given as a file is followed (:class:`SigningKeyFile`): a Kubernetes Secret rotated in place takes
effect within about a second, without a restart, and a file briefly missing or empty during the swap keeps
the last good key.

Verified events:

    failed, severity permanent   -> suppressed (reason bounce, with the SMTP code and message)
    failed, severity temporary   -> counted per recipient; threshold within the window -> suppressed
    complained / unsubscribed    -> suppressed (reason complaint / unsubscribe)
    anything else                -> counted, 200

The pure parts (``verify``, ``decide``) do no I/O; ``create_app`` wires them to Redis and the key source.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import redis
import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailroom.config import SECRET_CHECK_INTERVAL, FollowedSecretFile, ProviderConfig, read_secret_file
from mailroom.provider.metrics import WEBHOOK_EVENTS, WEBHOOK_REJECTED
from mailroom.provider.suppression import SuppressionList, normalise

log = structlog.get_logger("mailroom.provider.webhooks")

REPLAY_PREFIX = "mailroom:webhook-token:"
# Every method reaches the endpoint, so that the wrong one is counted and answered like the rest (404).
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
MAX_TOKEN_CHARS = 256
# How often the key file is looked at (one stat; it is read only when the stat changed).
KEY_CHECK_INTERVAL = SECRET_CHECK_INTERVAL
KNOWN_EVENTS = frozenset(
    {
        "accepted",
        "rejected",
        "delivered",
        "failed",
        "opened",
        "clicked",
        "unsubscribed",
        "complained",
        "stored",
    }
)


class Reason(StrEnum):
    """Why a call was answered 404 (the ``reason`` label)."""

    METHOD = "method"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    MALFORMED = "malformed"
    MISSING_SIGNATURE = "missing_signature"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale_timestamp"
    REPLAY = "replay"


class Unverified(Exception):
    def __init__(self, reason: Reason) -> None:
        self.reason = reason
        super().__init__(reason.value)


@dataclass(frozen=True)
class Verified:
    timestamp: int
    token: str
    event: dict[str, Any]  # the "event-data" object


@dataclass(frozen=True)
class Decision:
    event: str  # the event type, or "unknown"
    severity: str  # permanent, temporary, or "" when the event has none
    domain: str  # the sending domain (envelope sender), or "unknown"
    recipient: str | None  # normalised
    suppress: str | None  # the suppression reason, when the event alone suppresses
    temporary: bool  # a temporary failure, counted toward the threshold
    code: str | None
    message: str | None
    event_id: str | None


def sign(key: str, timestamp: str | int, token: str) -> str:
    """The signature Mailgun sends: hex HMAC-SHA256(key, timestamp + token)."""
    return hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()


def verify(body: bytes, key: str, now: float, tolerance: int) -> Verified:
    """The verified call in ``body``, or :class:`Unverified` naming what is wrong. Pure."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSON nested 100,000 deep is malformed too
        raise Unverified(Reason.MALFORMED) from None
    if not isinstance(data, dict):
        raise Unverified(Reason.MALFORMED)
    signature = data.get("signature")
    if not isinstance(signature, dict):
        raise Unverified(Reason.MISSING_SIGNATURE)
    timestamp, token, digest = (signature.get(k) for k in ("timestamp", "token", "signature"))
    if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in (timestamp, token, digest)):
        raise Unverified(Reason.MISSING_SIGNATURE)
    timestamp, token, digest = str(timestamp), str(token), str(digest)
    if not timestamp.isdigit() or not token or len(token) > MAX_TOKEN_CHARS:
        raise Unverified(Reason.MALFORMED)
    if not hmac.compare_digest(sign(key, timestamp, token).encode(), digest.encode("utf-8", "replace")):
        raise Unverified(Reason.BAD_SIGNATURE)
    if abs(now - int(timestamp)) > tolerance:
        raise Unverified(Reason.STALE)
    event = data.get("event-data")
    if not isinstance(event, dict):
        raise Unverified(Reason.MALFORMED)
    return Verified(int(timestamp), token, event)


def decide(event: dict[str, Any]) -> Decision:
    """What a verified event means for the suppression list. Pure; never raises on odd payloads."""
    kind = _text(event.get("event")) or "unknown"
    if kind not in KNOWN_EVENTS:
        kind = "unknown"
    severity = _text(event.get("severity")) if kind == "failed" else ""
    if severity not in ("", "permanent", "temporary"):
        severity = "other"
    try:
        recipient: str | None = normalise(_text(event.get("recipient")) or "")
    except ValueError:
        recipient = None
    envelope = event.get("envelope")
    sender = _text(envelope.get("sender")) if isinstance(envelope, dict) else ""
    domain = sender.rpartition("@")[2].lower()[:100] or "unknown"
    status = event.get("delivery-status")
    status = status if isinstance(status, dict) else {}
    code = _text(status.get("code")) or None
    message = _text(status.get("message")) or _text(status.get("description")) or _text(event.get("reason"))
    suppress = None
    if recipient is not None:
        if kind == "failed" and severity == "permanent":
            suppress = "bounce"
        elif kind == "complained":
            suppress = "complaint"
        elif kind == "unsubscribed":
            suppress = "unsubscribe"
    return Decision(
        event=kind,
        severity=severity,
        domain=domain,
        recipient=recipient,
        suppress=suppress,
        temporary=recipient is not None and kind == "failed" and severity == "temporary",
        code=code,
        message=message or None,
        event_id=_text(event.get("id")) or None,
    )


def _text(value: Any) -> str:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value).strip()
    return ""


class SigningKeySource(Protocol):
    """Where the app takes the signing key from, on every call (so that a rotated key takes effect)."""

    def current(self) -> str: ...


class FixedSigningKey:
    """A key given inline or by environment variable: it cannot change while the process runs."""

    def __init__(self, key: str) -> None:
        if not key.strip():
            raise ValueError("a webhook signing key is required")
        self._key = key

    def current(self) -> str:
        return self._key


class SigningKeyFile:
    """The webhook signing key as a followed file (mailroom.config.FollowedSecretFile): a Secret rotated
    in place takes effect within a second, and a file missing or empty for a moment keeps the last good
    key (answering 404 to every genuine call would be worse than verifying against the key of a second
    ago). At start-up the key must be there: OSError, or ValueError for an empty file."""

    def __init__(
        self,
        path: Path,
        *,
        check_interval: float = KEY_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[Path], str] = read_secret_file,
    ) -> None:
        self.path = path
        self._file = FollowedSecretFile(
            path, name="webhook_signing_key", check_interval=check_interval, clock=clock, read=read
        )
        try:
            self._file.current()
        except ValueError:
            raise ValueError(f"the webhook signing key file {path} is empty") from None

    def current(self) -> str:
        """The key to verify this call with: the file's, as of the last check."""
        return self._file.current()


def signing_key_source(config: ProviderConfig) -> SigningKeySource:
    """The key the config names: a followed file, or the fixed inline / environment value."""
    if config.signing_key_file is not None:
        return SigningKeyFile(config.signing_key_file)
    return FixedSigningKey(config.read_signing_key() or "")


class WebhookProcessor:
    """The I/O half: the replay check and the suppression-list writes (synchronous, one thread each)."""

    def __init__(self, config: ProviderConfig, connection: redis.Redis) -> None:
        self.config = config
        self._redis = connection
        self.suppressions = SuppressionList(connection)

    def claim(self, verified: Verified) -> bool:
        """Remember the token; False if it was seen before (a replay)."""
        key = REPLAY_PREFIX + verified.token
        return bool(self._redis.set(key, "1", nx=True, ex=self.config.replay_ttl))

    def release(self, verified: Verified) -> None:
        self._redis.delete(REPLAY_PREFIX + verified.token)

    def apply(self, verified: Verified, decision: Decision) -> str | None:
        """Update the list; the suppression reason if the recipient was suppressed."""
        if decision.recipient is None:
            return None
        reason = decision.suppress
        if decision.temporary:
            count = self.suppressions.record_temporary_failure(
                decision.recipient,
                decision.event_id or verified.token,
                self.config.temporary_failure_window,
                float(verified.timestamp),
            )
            if count >= self.config.temporary_failure_threshold:
                reason = "temporary_failures"
        if reason is None:
            return None
        self.suppressions.suppress(
            decision.recipient,
            reason,
            code=decision.code,
            message=decision.message,
            source="mailgun",
            at=float(verified.timestamp),
        )
        return reason


def create_app(
    config: ProviderConfig,
    connection: redis.Redis,
    signing_key: str | SigningKeySource,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The ASGI app: ``POST {webhook_path}`` and ``GET /healthz``; everything else 404, empty.

    ``signing_key`` is a fixed key or a source asked on every call (:class:`SigningKeyFile`).
    """
    keys = FixedSigningKey(signing_key) if isinstance(signing_key, str) else signing_key
    processor = WebhookProcessor(config, connection)

    async def webhook(request: Request) -> Response:
        try:
            if request.method != "POST":
                raise Unverified(Reason.METHOD)
            body = await _read_body(request, config.max_body_bytes, config.request_timeout)
            verified = verify(body, keys.current(), clock(), config.timestamp_tolerance)
            if not await run_in_threadpool(processor.claim, verified):
                raise Unverified(Reason.REPLAY)
        except Unverified as exc:
            WEBHOOK_REJECTED.labels(exc.reason.value).inc()
            log.warning("webhook_rejected", reason=exc.reason.value)
            return Response(status_code=404)
        except redis.RedisError as exc:
            # The token could not be claimed: nothing was recorded, so the provider's retry is welcome.
            log.error("webhook_redis_failed", error=f"{type(exc).__name__}: {exc}")
            return Response(status_code=503)
        decision = decide(verified.event)
        WEBHOOK_EVENTS.labels(decision.event, decision.severity, decision.domain).inc()
        try:
            suppressed = await run_in_threadpool(processor.apply, verified, decision)
        except redis.RedisError as exc:
            # Not processed: forget the token so the provider's retry is accepted, and ask for one.
            log.error("webhook_redis_failed", error=f"{type(exc).__name__}: {exc}")
            await run_in_threadpool(_release_quietly, processor, verified)
            return Response(status_code=503)
        log.info(
            "webhook_event",
            webhook_event=decision.event,
            severity=decision.severity or None,
            recipient=decision.recipient,
            suppressed=suppressed,
        )
        return Response(status_code=200)

    async def healthz(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def not_found(request: Request, exc: Exception) -> Response:
        return Response(status_code=404)

    app = Starlette(
        routes=[Route(config.webhook_path, webhook, methods=ALL_METHODS), Route("/healthz", healthz)],
        exception_handlers={404: not_found, 405: not_found},
    )
    app.router.redirect_slashes = False  # a 307 to the real path would answer an unverified call
    return app


def _release_quietly(processor: WebhookProcessor, verified: Verified) -> None:
    try:
        processor.release(verified)
    except redis.RedisError:
        pass


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Unverified(Reason.TOO_LARGE)

    async def read() -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except _TooLarge:
        raise Unverified(Reason.TOO_LARGE) from None
    except TimeoutError:
        raise Unverified(Reason.TIMEOUT) from None
