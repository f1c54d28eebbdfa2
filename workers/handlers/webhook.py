"""POST the raw message to the application, the way GitLab's mail_room ``postback`` delivery does.

The body is the message bytes (``text/plain``); the request carries a JWT in the
``Gitlab-Mailroom-Api-Request`` header: HS256, issuer ``gitlab-mailroom``, ``iat`` now, signed with the
secret whose Base64 text is in ``webhook.secret_file``. A 2xx answer is success; 408, 429, 5xx and network
errors are transient (retried); any other answer is permanent.
"""

from __future__ import annotations

import base64
import binascii
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import jwt

from mailroom.config import WebhookConfig, read_secret_file
from workers.errors import PermanentHandlerError, TransientHandlerError
from workers.incoming import IncomingEmail

JWT_HEADER = "Gitlab-Mailroom-Api-Request"
JWT_ISSUER = "gitlab-mailroom"
JWT_ALGORITHM = "HS256"
_TRANSIENT_STATUSES = frozenset({408, 425, 429})


class _Refuse(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx then surfaces as an HTTPError with its status


_NO_REDIRECTS = urllib.request.build_opener(_Refuse)


def signing_secret(config: WebhookConfig) -> bytes:
    text = read_secret_file(config.secret_file).strip()
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise PermanentHandlerError(f"webhook.secret_file {config.secret_file} is not Base64") from exc


def make_token(secret: bytes, now: float | None = None) -> str:
    claims = {"iss": JWT_ISSUER, "iat": int(now if now is not None else time.time())}
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


@dataclass(frozen=True)
class WebhookHandler:
    config: WebhookConfig

    def __call__(self, email: IncomingEmail) -> int:
        request = urllib.request.Request(  # noqa: S310 - the URL is validated as http(s) by the config
            self.config.url,
            data=email.raw,
            method="POST",
            headers={
                "Content-Type": "text/plain",
                JWT_HEADER: make_token(signing_secret(self.config)),
                "User-Agent": "mailroom",
            },
        )
        try:
            with _NO_REDIRECTS.open(request, timeout=self.config.timeout) as response:
                status: int = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            raise TransientHandlerError(f"POST {self.config.url} failed: {exc}") from exc
        if 200 <= status < 300:
            return status
        if 300 <= status < 400:
            # Never followed: urllib would resend a POST as a bodiless GET, JWT and all, to wherever it
            # points, and a 2xx there would count as delivered.
            raise PermanentHandlerError(f"POST {self.config.url} redirected ({status}): fix webhook.url")
        if status >= 500 or status in _TRANSIENT_STATUSES:
            raise TransientHandlerError(f"POST {self.config.url} answered {status}")
        raise PermanentHandlerError(f"POST {self.config.url} answered {status}")
