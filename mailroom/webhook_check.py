"""``mailroom check``'s webhook lines: does each configured webhook endpoint exist, and does it check
its token? The commonest failure in webhook mode is a wrong URL or an endpoint that accepts anything.

For each distinct ``webhook.url``: its host resolves (DNS); for https, a TLS handshake with the
certificate verified exactly as the worker's handler verifies it (the system's trust store); then one
POST with an empty body and no credentials at all, which the endpoint must refuse: 401, 403 or 404
show the URL answers and checks its token (✓); a 2xx means it accepts unsigned calls (✗); anything
else, or no answer, is ✗ with what happened. Nothing secret is read or sent, and the URL is shown
with password-like parts masked.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx

from mailroom.check import Outcome, Result
from mailroom.config import Settings, WebhookConfig, mask_url

REFUSED = frozenset({401, 403, 404})


def configured_webhooks(settings: Settings) -> list[WebhookConfig]:
    """Each mailbox's webhook, one per URL."""
    seen: dict[str, WebhookConfig] = {}
    for mailbox in settings.mailboxes:
        hook = getattr(mailbox, "webhook", None)
        if isinstance(hook, WebhookConfig) and hook.url not in seen:
            seen[hook.url] = hook
    return list(seen.values())


def check_webhooks(settings: Settings) -> Iterator[Result]:
    for hook in configured_webhooks(settings):
        yield from probe(hook)


def _label(url: str) -> str:
    parts = urlsplit(url)
    return "webhook " + mask_url(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))


def probe(hook: WebhookConfig) -> Iterator[Result]:
    parts = urlsplit(hook.url)
    label = _label(hook.url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        yield Result(f"{label}: dns", Outcome.FAIL, f"{host} does not resolve: {_reason(exc)}")
        return
    addresses = sorted({str(info[4][0]) for info in infos})
    shown = ", ".join(addresses[:3]) + (f" (+{len(addresses) - 3})" if len(addresses) > 3 else "")
    yield Result(f"{label}: dns", Outcome.OK, f"{host} resolves to {shown}")

    context = ssl.create_default_context()  # as the worker's handler: the system's trust store
    if https:
        try:
            with (
                socket.create_connection((host, port), timeout=hook.timeout) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                version = tls.version()
        except ssl.SSLCertVerificationError as exc:
            yield Result(f"{label}: tls", Outcome.FAIL, f"certificate not verified: {exc.verify_message}")
            return
        except (OSError, ssl.SSLError) as exc:
            yield Result(f"{label}: tls", Outcome.FAIL, f"{host}:{port}: {_reason(exc)}")
            return
        yield Result(f"{label}: tls", Outcome.OK, f"{version}, certificate verified")
    else:
        yield Result(f"{label}: tls", Outcome.WARN, "http://: no TLS, messages travel in clear text")

    try:
        response = httpx.post(
            hook.url,
            content=b"",
            headers={"Content-Type": hook.content_type},
            timeout=hook.timeout,
            verify=context,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        yield Result(f"{label}: unsigned", Outcome.FAIL, f"no answer: {type(exc).__name__}: {_reason(exc)}")
        return
    status = f"{response.status_code} {response.reason_phrase}".strip()
    if response.status_code in REFUSED:
        detail = f"an unsigned POST is refused ({status}): the URL answers and checks its token"
        yield Result(f"{label}: unsigned", Outcome.OK, detail)
    elif response.is_success:
        detail = f"an unsigned POST was accepted ({status}): the endpoint does not check its token"
        yield Result(f"{label}: unsigned", Outcome.FAIL, detail)
    else:
        detail = f"an unsigned POST got {status}; expected 401, 403 or 404 (refused for want of a token)"
        yield Result(f"{label}: unsigned", Outcome.FAIL, detail)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:300]
