"""OAuth2 access tokens for IMAP (XOAUTH2 / OAUTHBEARER) and Microsoft Graph.

A ``TokenSource`` hands out a current access token and can be told that the server refused it:

- ``FileTokenSource``: a file holding the token (a sidecar or a Kubernetes secret keeps it fresh); it is
  re-read whenever the file changes (inode, size or modification time), and after a refusal.
- ``GrantTokenSource``: the RFC 6749 client-credentials grant (section 4.4; Microsoft's identity platform)
  or refresh-token grant (section 6; Google), through authlib's requests client. The token is cached and
  replaced ``refresh_margin`` seconds before it expires (at most half its lifetime early), and at once
  after a refusal.

Why authlib and not msal: msal only accepts ``https://`` authorities (``msal.authority.canonicalize``
raises for anything else), so it cannot be pointed at the plain-HTTP loopback token endpoint the tests
run; authlib speaks the same standard grants to any endpoint (http only on loopback) and covers Google's
refresh-token flow too, so one code path serves both providers.

Failures raise ``TokenError`` with the endpoint's ``error`` and ``error_description`` (RFC 6749 5.2),
never the secret or the token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from mailroom.config import FollowedSecretFile, OAuth2Config, read_secret_file
from mailroom.errors import TokenError

log = structlog.get_logger("mailroom.oauth2")

XOAUTH2 = "XOAUTH2"
OAUTHBEARER = "OAUTHBEARER"


class TokenSource(Protocol):
    def token(self) -> str:
        """A current access token; raises TokenError."""
        ...

    def invalidate(self) -> None:
        """The server refused the last token: the next ``token()`` must not return it from a cache."""
        ...


class FileTokenSource:
    """The token in a file that a sidecar keeps fresh, followed (mailroom.config.FollowedSecretFile):
    looked at at most once a second, re-read when it changed, the last good token kept while the file
    is briefly missing or empty (a Kubernetes Secret swap)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._file = FollowedSecretFile(path, name="oauth2_token_file", clock=clock)

    def token(self) -> str:
        try:
            return self._file.current().strip()
        except OSError as exc:
            raise TokenError(f"token_file {self.path}: {exc.strerror or exc}") from None
        except ValueError:
            raise TokenError(f"token_file {self.path} is empty or not UTF-8") from None

    def invalidate(self) -> None:
        self._file.recheck()


class GrantTokenSource:
    """Tokens from a token endpoint, by the client-credentials or the refresh-token grant."""

    def __init__(
        self,
        *,
        name: str,
        token_url: str,
        client_id: str,
        client_secret_file: Path | None,
        scope: str | None,
        refresh_token_file: Path | None = None,
        refresh_margin: float = 300.0,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret_file = client_secret_file
        self.scope = scope
        self.refresh_token_file = refresh_token_file
        self.refresh_margin = refresh_margin
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    @property
    def grant(self) -> str:
        return "client_credentials" if self.refresh_token_file is None else "refresh_token"

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._token, lifetime = self._fetch()
                early = min(self.refresh_margin, lifetime / 2)
                self._renew_at = self._clock() + lifetime - early
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self) -> tuple[str, float]:
        # Imported here: a password-only deployment never pays for authlib and requests (~25 MB RSS).
        import requests
        from authlib.integrations.base_client.errors import OAuthError
        from authlib.integrations.requests_client import OAuth2Session

        secret = read_secret_file(self.client_secret_file) if self.client_secret_file else None
        session = OAuth2Session(
            self.client_id,
            secret,
            scope=self.scope,
            token_endpoint_auth_method="client_secret_post" if secret else "none",
        )
        try:
            with session:
                if self.refresh_token_file is None:
                    answer = session.fetch_token(
                        self.token_url, grant_type="client_credentials", timeout=self.timeout
                    )
                else:
                    answer = session.refresh_token(
                        self.token_url,
                        refresh_token=read_secret_file(self.refresh_token_file).strip(),
                        timeout=self.timeout,
                    )
        except OAuthError as exc:
            why = f"{exc.error}: {exc.description}" if exc.description else str(exc.error)
            raise TokenError(
                f"token endpoint {self.token_url} refused the {self.grant} grant: {why}"
            ) from None
        except requests.RequestException as exc:
            raise TokenError(f"token endpoint {self.token_url} failed: {type(exc).__name__}") from None
        except OSError as exc:  # the secret files
            raise TokenError(f"{exc.filename}: {exc.strerror or exc}") from None
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenError(f"token endpoint {self.token_url} answered without an access_token")
        lifetime = float(answer.get("expires_in") or 3600)
        log.info("oauth2_token_fetched", mailbox=self.name, grant=self.grant, expires_in=lifetime)
        return token, lifetime


def token_source_for(name: str, config: OAuth2Config, timeout: float = 30.0) -> TokenSource:
    if config.token_file is not None:
        return FileTokenSource(config.token_file)
    if config.client_credentials is not None:
        cc = config.client_credentials
        return GrantTokenSource(
            name=name,
            token_url=cc.effective_token_url,
            client_id=cc.client_id,
            client_secret_file=cc.client_secret_file,
            scope=cc.scope,
            refresh_margin=config.refresh_margin,
            timeout=timeout,
        )
    assert config.refresh_token is not None  # exactly one source, by the config validator
    rt = config.refresh_token
    return GrantTokenSource(
        name=name,
        token_url=rt.token_url,
        client_id=rt.client_id,
        client_secret_file=rt.client_secret_file,
        scope=rt.scope,
        refresh_token_file=rt.refresh_token_file,
        refresh_margin=config.refresh_margin,
        timeout=timeout,
    )


def choose_mechanism(capabilities: frozenset[bytes], wanted: str) -> str:
    """XOAUTH2 or OAUTHBEARER: the one configured, else what CAPABILITY offers (XOAUTH2 first: both
    Gmail and Microsoft 365 document it); XOAUTH2 when the server advertises neither."""
    if wanted != "auto":
        return wanted.upper()
    offered = {c.upper() for c in capabilities}
    if b"AUTH=XOAUTH2" in offered or b"AUTH=OAUTHBEARER" not in offered:
        return XOAUTH2
    return OAUTHBEARER
