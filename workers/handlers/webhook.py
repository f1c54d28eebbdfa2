"""POST the raw message to the application, the way GitLab's mail_room ``postback`` delivery does.

The body is the message bytes (``text/plain``); the request carries a JWT in the
``Gitlab-Mailroom-Api-Request`` header: HS256, issuer ``gitlab-mailroom``, ``iat`` now, signed with the
secret whose Base64 text is in ``webhook.secret_file``. Those are GitLab's defaults: the header, issuer,
algorithm and content type can be changed, and HTTP basic auth or a token added, as mail_room's postback
allows (``WebhookConfig``). A 2xx answer is success; 408, 425, 429, 5xx and
network errors (timeouts included) are transient (retried); any other answer is permanent, and so is a
redirect, which is never followed.

One httpx transport (``httpx.HTTPTransport``, httpx's connection pool over httpcore) per handler, so a
worker running N jobs at once keeps N connections to the application open and reuses them (urllib opened
one per message). The handler sends through the transport, not an ``httpx.Client``: the client's layers
(URL merging, cookies, auth flow, redirect handling, an INFO log line per request) cost about a third of
the request's CPU and do nothing for one fixed POST, and a transport cannot follow a redirect. The URL is
parsed once, and the headers (the JWT, the authentication read from its files) are built once a second,
so a request reads no file. What is left is httpcore and h11 (pure Python) and the socket calls: about
0.25 ms of CPU per message on the benchmark machine, against 0.4 ms through the client
(``python -m bench.webhook`` measures it apart from the worker; docs/performance.md).
"""

from __future__ import annotations

import base64
import binascii
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

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
    files; the handler does so at most once a second, see _Headers); empty when neither is set."""
    if config.token_file is not None:
        return {"Authorization": f"{config.token_scheme} {read_secret_file(config.token_file).strip()}"}
    if config.username is not None and config.password_file is not None:
        pair = f"{config.username}:{read_secret_file(config.password_file)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    return {}


def make_transport(config: WebhookConfig) -> httpx.HTTPTransport:
    """The connection pool: the system's trust store (as urllib had, not certifi's), no proxy or netrc
    taken from the environment behind the config's back. A transport never follows a redirect (that is
    the client layer's business) and keeps up to KEEPALIVE_CONNECTIONS idle connections."""
    return httpx.HTTPTransport(
        verify=ssl.create_default_context(),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS),
        trust_env=False,
    )


class _Headers:
    """The request's headers, but for ``Content-Length``, for the current second.

    ``iat`` has a one-second granularity, so every request of that second carries the same token; the
    secret, password and token files are read at most once a second, so a rotated secret takes effect
    within a second without a restart and a request reads no file."""

    def __init__(self, config: WebhookConfig, host: str) -> None:
        self._config = config
        self._host = host
        self._lock = threading.Lock()
        self._current: tuple[int, dict[str, str], httpx.Headers] = (-1, {}, httpx.Headers())

    def current(self) -> tuple[dict[str, str], httpx.Headers]:
        """The delivery options' headers (content type, authentication) and the whole set sent."""
        second = int(time.time())
        current = self._current  # one read: the second and its headers always belong together
        if current[0] != second:
            with self._lock:
                current = self._current
                if current[0] != second:
                    current = self._current = (second, *self._build(second))
        return current[1], current[2]

    def _build(self, second: int) -> tuple[dict[str, str], httpx.Headers]:
        config = self._config
        options = {"Content-Type": config.content_type, **auth_headers(config)}
        if config.secret_file is not None:
            token = make_token(signing_secret(config), second, config.jwt_issuer, config.jwt_algorithm)
            options[config.jwt_header] = token
        return options, httpx.Headers({"Host": self._host, "User-Agent": "mailroom", **options})


@dataclass(frozen=True)
class WebhookHandler:
    config: WebhookConfig
    transport: httpx.HTTPTransport = field(init=False, repr=False, compare=False)
    _url: httpx.URL = field(init=False, repr=False, compare=False)
    _headers: _Headers = field(init=False, repr=False, compare=False)
    _extensions: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        url = httpx.URL(self.config.url)  # parsed once, not at each request
        object.__setattr__(self, "transport", make_transport(self.config))
        object.__setattr__(self, "_url", url)
        object.__setattr__(self, "_headers", _Headers(self.config, url.netloc.decode("ascii")))
        # webhook.timeout for connecting, each read and write, and waiting for a pooled connection.
        object.__setattr__(self, "_extensions", {"timeout": httpx.Timeout(self.config.timeout).as_dict()})

    def headers(self) -> dict[str, str]:
        """The request's headers from the delivery options of mail_room's postback: content type, the
        JWT (GitLab's header and claims unless configured otherwise), basic auth or a token."""
        return dict(self._headers.current()[0])

    def __call__(self, email: IncomingEmail) -> int:
        raw = email.raw
        headers = httpx.Headers(self._headers.current()[1])
        headers["Content-Length"] = str(len(raw))
        request = httpx.Request(
            "POST", self._url, headers=headers, stream=httpx.ByteStream(raw), extensions=self._extensions
        )
        try:
            response = self.transport.handle_request(request)
            try:
                response.read()  # the (ignored) body, so that the connection goes back to the pool
            finally:
                response.close()
        except httpx.TransportError as exc:  # connect, read, write and pool timeouts, refused, reset
            url = self.config.url
            # Error texts travel to logs, history, RQ's failed registry and Sentry: never a token in the URL.
            shown = mask_url(url)
            detail = str(exc).replace(url, shown)
            raise TransientHandlerError(f"POST {shown} failed: {type(exc).__name__}: {detail}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return status
        shown = mask_url(self.config.url)
        if 300 <= status < 400:
            # Never followed: a client that follows resends a POST as a bodiless GET, JWT and all, to
            # wherever it points, and a 2xx there would count as delivered.
            raise PermanentHandlerError(f"POST {shown} redirected ({status}): fix webhook.url")
        if status >= 500 or status in _TRANSIENT_STATUSES:
            raise TransientHandlerError(f"POST {shown} answered {status}")
        raise PermanentHandlerError(f"POST {shown} answered {status}")
