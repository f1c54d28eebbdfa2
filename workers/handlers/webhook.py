"""POST the raw message to the application, the way GitLab's mail_room ``postback`` delivery does.

The body is the message bytes (``text/plain``); the request carries a JWT in the
``Gitlab-Mailroom-Api-Request`` header: HS256, issuer ``gitlab-mailroom``, ``iat`` now, signed with the
secret whose Base64 text is in ``webhook.secret_file``. Those are GitLab's defaults: the header, issuer,
algorithm and content type can be changed, and HTTP basic auth or a token added, as mail_room's postback
allows (``WebhookConfig``). A 2xx answer is success; 408, 425, 429, 5xx and
network errors (timeouts included) are transient (retried); any other answer is permanent, and so is a
redirect, which is never followed.

One ``httpx.Client`` per handler holds a connection pool, so a worker running jobs concurrently keeps
that many connections to the application open and reuses them (urllib opened one per message).
"""

from __future__ import annotations

import base64
import binascii
import ssl
import threading
import time
from dataclasses import dataclass, field

import httpx
import jwt

from mailroom.config import WebhookConfig, mask_url, read_secret_file
from workers.errors import PermanentHandlerError, TransientHandlerError
from workers.incoming import IncomingEmail

JWT_HEADER = "Gitlab-Mailroom-Api-Request"
JWT_ISSUER = "gitlab-mailroom"
JWT_ALGORITHM = "HS256"
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
# Connections kept open to the application: more than any sensible worker concurrency.
KEEPALIVE_CONNECTIONS = 64


def signing_secret(config: WebhookConfig) -> bytes:
    assert config.secret_file is not None  # only asked for when a JWT is configured
    text = read_secret_file(config.secret_file).strip()
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise PermanentHandlerError(f"webhook.secret_file {config.secret_file} is not Base64") from exc


def make_token(
    secret: bytes, now: float | None = None, issuer: str = JWT_ISSUER, algorithm: str = JWT_ALGORITHM
) -> str:
    claims = {"iss": issuer, "iat": int(now if now is not None else time.time())}
    return jwt.encode(claims, secret, algorithm=algorithm)


def auth_headers(config: WebhookConfig) -> dict[str, str]:
    """``Authorization`` for basic auth or a token, as mail_room's postback sends them (read from their
    files at each request, so a rotated secret takes effect at once); empty when neither is set."""
    if config.token_file is not None:
        return {"Authorization": f"{config.token_scheme} {read_secret_file(config.token_file).strip()}"}
    if config.username is not None and config.password_file is not None:
        pair = f"{config.username}:{read_secret_file(config.password_file)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return {}


def make_client(config: WebhookConfig) -> httpx.Client:
    """The pooled client: the system's trust store (as urllib had, not certifi's), redirects never
    followed, ``webhook.timeout`` for connecting, each read and write, and waiting for a connection."""
    return httpx.Client(
        timeout=httpx.Timeout(config.timeout),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS),
        follow_redirects=False,
        verify=ssl.create_default_context(),
        trust_env=False,  # no proxy or netrc taken from the environment behind the config's back
        headers={"User-Agent": "mailroom"},
    )


class _TokenCache:
    """The signed header for the current second: ``iat`` has a one-second granularity, so every
    request of that second carries the same token, and the secret file is re-read at most once a
    second (a rotated key still takes effect without a restart)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._second = -1
        self._token = ""

    def token(self, config: WebhookConfig) -> str:
        second = int(time.time())
        with self._lock:
            if second != self._second:
                self._token = make_token(
                    signing_secret(config), second, config.jwt_issuer, config.jwt_algorithm
                )
                self._second = second
            return self._token


@dataclass(frozen=True)
class WebhookHandler:
    config: WebhookConfig
    client: httpx.Client = field(init=False, repr=False, compare=False)
    _tokens: _TokenCache = field(init=False, repr=False, compare=False, default_factory=_TokenCache)

    def __post_init__(self) -> None:
        object.__setattr__(self, "client", make_client(self.config))

    def headers(self) -> dict[str, str]:
        """The request's headers, from the delivery options of mail_room's postback: content type, the
        JWT (GitLab's header and claims unless configured otherwise), basic auth or a token."""
        headers = {"Content-Type": self.config.content_type, **auth_headers(self.config)}
        if self.config.secret_file is not None:
            headers[self.config.jwt_header] = self._tokens.token(self.config)
        return headers

    def __call__(self, email: IncomingEmail) -> int:
        url = self.config.url
        # Error texts travel to logs, history, RQ's failed registry and Sentry: never a token in the URL.
        shown = mask_url(url)
        try:
            response = self.client.post(url, content=email.raw, headers=self.headers())
        except httpx.TransportError as exc:  # connect, read, write and pool timeouts, refused, reset
            detail = str(exc).replace(url, shown)
            raise TransientHandlerError(f"POST {shown} failed: {type(exc).__name__}: {detail}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return status
        if 300 <= status < 400:
            # Never followed: a client that follows resends a POST as a bodiless GET, JWT and all, to
            # wherever it points, and a 2xx there would count as delivered.
            raise PermanentHandlerError(f"POST {shown} redirected ({status}): fix webhook.url")
        if status >= 500 or status in _TRANSIENT_STATUSES:
            raise TransientHandlerError(f"POST {shown} answered {status}")
        raise PermanentHandlerError(f"POST {shown} answered {status}")
