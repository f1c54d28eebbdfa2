"""Configuration: one YAML file, every field overridable by ``MAILROOM_*`` environment variables.

This is the only module that reads environment variables, the YAML file and secret files.

Precedence, highest first: keyword arguments, environment variables, the YAML file, defaults.
Nested fields use ``__``; list items are addressed by index, so
``MAILROOM_MAILBOXES__0__PASSWORD_FILE=/run/secrets/imap`` sets the first mailbox's password file.
A whole list can also be given as JSON (``MAILROOM_MAILBOXES='[{"name": ...}]'``). Variables that name
no field (Kubernetes service links, Docker links) are ignored: see config_env.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args
from urllib.parse import urlsplit

import structlog
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mailroom.config_env import EnvSettings, settings_from_env
from mailroom.errors import ConfigError

ENV_PREFIX = "MAILROOM_"
CONFIG_PATH_ENV = "MAILROOM_CONFIG"
INCOMING_ADDRESS_ENV = "MAILROOM_INCOMING_ADDRESS"  # `mailroom parse`'s template, when no config is used
NOT_SETTINGS = frozenset({CONFIG_PATH_ENV, INCOMING_ADDRESS_ENV})
MAX_IDLE_TIMEOUT = 29 * 60  # RFC 2177: servers may drop an IDLE after 30 minutes
DEFAULT_QUEUE = "incoming_email"
DEFAULT_ADDRESS = "incoming+%{key}@example.com"
MASK = "*" * 10
BUILTIN_HANDLERS = frozenset({"log", "webhook"})


class Security(StrEnum):
    TLS = "tls"
    STARTTLS = "starttls"
    NONE = "none"


class AfterDeliveryAction(StrEnum):
    SEEN = "seen"
    DELETE = "delete"
    MOVE = "move"


class _Model(BaseModel):
    """The one way every config model validates, so each problem is reported at its own field.

    A rule about the form of one value is a type, a ``Field`` constraint or a field validator: pydantic
    reports it together with every other malformed value. A rule that needs more than the value (other
    fields, the file system, where a secret may be sent) is a ``(field, problem)`` pair from
    ``_problems()``, checked once every field parsed; a ``SecretFile`` or ``ReadableFile`` that is not a
    readable file is such a problem. Nothing raises at the model level without naming a field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def _problems(self) -> list[tuple[str, str]]:
        return []

    @model_validator(mode="after")
    def _no_problems(self) -> Self:
        fields = type(self).model_fields
        problems = [
            (name, f"{value} is not a readable file")
            for name, value in self
            if isinstance(value, Path) and _READABLE in _annotations(fields[name]) and not value.is_file()
        ]
        _problems_found(type(self).__name__, problems + self._problems())
        return self


_READABLE = "readable_file"  # marks a Path field that must name a readable file (checked by _Model)


def _annotations(field: FieldInfo) -> list[Any]:
    """The field's metadata, and that of an Annotated inside its type (``SecretFile | None``)."""
    found = list(field.metadata)
    pending = [field.annotation]
    while pending:
        annotation = pending.pop()
        found.extend(getattr(annotation, "__metadata__", ()))
        pending.extend(get_args(annotation))
    return found


# A file mailroom reads (a CA bundle), and the one type of a secret held in a file (a mounted
# Kubernetes/Docker secret, read fresh on every use, so a rotated secret takes effect without a
# restart). Inline secrets are SecretStr.
ReadableFile = Annotated[Path, _READABLE]
SecretFile = Annotated[Path, _READABLE, Field(description="a file holding a secret, re-read on every use")]


def read_secret_file(path: Path) -> str:
    """A secret from a mounted file, without the trailing newline editors and ``kubectl`` add."""
    return path.read_text(encoding="utf-8").rstrip("\r\n")


SECRET_CHECK_INTERVAL = 1.0  # seconds between two looks at a followed secret file
SECRET_RACY_SECONDS = 2.0  # a file's stat younger than this may hide a rewrite within one timestamp tick
_Stamp = tuple[int, int, int, int]  # device, inode, size, mtime in ns: what a rewrite or a swap changes


class FollowedSecretFile:
    """A secret in a file that is replaced under the running process, as a Kubernetes Secret volume is.

    The file is stat'ed at most once per ``check_interval`` (seconds of ``clock``) and read only when its
    stat changed, so a call costs no I/O. ``os.stat`` follows symlinks, so the kubelet's swap of the
    ``..data`` link shows as a new inode; a stat younger than SECRET_RACY_SECONDS is not trusted (a
    rewrite within one timestamp tick keeps size, inode and mtime), so the next check reads again. A file
    missing, unreadable or empty at a check (the moment of a swap, a careless rewrite) keeps the last
    good value, with one warning ``<name>_unreadable`` until it is good again. The value is never logged.

    The first read has no last good value: ``current()`` then raises OSError, or ValueError for an empty
    file or one that is not UTF-8.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        check_interval: float = SECRET_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[Path], str] = read_secret_file,
    ) -> None:
        self.path = path
        self.name = name
        self._interval = check_interval
        self._clock = clock
        self._read = read
        self._lock = threading.Lock()
        self._warned = False
        self._value: str | None = None
        self._stamp: _Stamp | None = None
        self._next_check = 0.0

    def current(self) -> str:
        """The secret, as of the last check."""
        if self._value is None:
            with self._lock:
                if self._value is None:
                    stamp = _stamp(self.path)
                    value = self._read(self.path)
                    if not value.strip():
                        raise ValueError(f"{self.path} is empty")
                    self._value, self._stamp = value, _trusted(stamp)
                    self._next_check = self._clock() + self._interval
            return self._value
        if self._clock() >= self._next_check:
            self._check()
        return self._value

    def recheck(self) -> None:
        """Look at the file again at the next call, whatever the interval (the secret was refused)."""
        self._stamp = None
        self._next_check = 0.0

    def _check(self) -> None:
        with self._lock:  # a thread pool caller must not race the check
            now = self._clock()
            if now < self._next_check:
                return
            self._next_check = now + self._interval
            try:
                stamp = _stamp(self.path)  # before the read: a write in between shows at the next check
                if stamp == self._stamp:
                    return
                value = self._read(self.path)
            except OSError as exc:
                self._keep_last(exc.strerror or type(exc).__name__)
                return
            except UnicodeDecodeError:
                self._keep_last("not UTF-8")
                return
            if not value.strip():
                self._keep_last("empty")
                return
            self._stamp = _trusted(stamp)
            log = structlog.get_logger("mailroom.config")
            if value != self._value:
                log.info(f"{self.name}_reloaded", path=str(self.path))
            elif self._warned:
                log.info(f"{self.name}_readable_again", path=str(self.path))
            self._value = value
            self._warned = False

    def _keep_last(self, problem: str) -> None:
        if not self._warned:
            structlog.get_logger("mailroom.config").warning(
                f"{self.name}_unreadable", path=str(self.path), problem=problem, keeping="last value"
            )
            self._warned = True


def _stamp(path: Path) -> _Stamp:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _trusted(stamp: _Stamp) -> _Stamp | None:
    """``stamp``, or None (read again at the next check) while the file is too new to be judged by it."""
    age = time.time() - stamp[3] / 1e9
    return stamp if age >= SECRET_RACY_SECONDS else None


def _read_secret(inline: SecretStr | None, path: Path | None) -> str | None:
    if path is not None:
        return read_secret_file(path)
    return inline.get_secret_value() if inline is not None else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _problems_found(model: str, problems: list[tuple[str, str]]) -> None:
    """Raise every problem at once, each as its own error at its own field (one line each)."""
    if problems:
        raise ValidationError.from_exception_data(
            model,
            [
                InitErrorDetails(
                    type=PydanticCustomError("config", message), loc=(field,) if field else (), input=None
                )
                for field, message in problems
            ],
        )


def clear_text_off_loopback(url: str) -> bool:
    """An http:// URL to another machine: what it carries (tokens, messages) crosses the network in clear."""
    return url.startswith("http://") and not _is_loopback(urlsplit(url).hostname or "")


def _http_url_problem(name: str, value: str | None) -> list[tuple[str, str]]:
    """Secrets and tokens travel to these URLs: https, or http only to this machine (a test server)."""
    if value is None or value.startswith("https://"):
        return []
    if value.startswith("http://") and _is_loopback(urlsplit(value).hostname or ""):
        return []
    return [(name, "must start with https:// (http:// only for a server on loopback)")]


_CLEARTEXT = "security: none sends the password in clear text; set allow_insecure: true to accept that"


def _one_of(names: tuple[str, str], values: tuple[object, object]) -> list[tuple[str, str]]:
    if values[0] is not None and values[1] is not None:
        return [(names[0], f"set at most one of {names[0]} and {names[1]}")]
    return []


class WebhookConfig(_Model):
    """The ``webhook`` handler: POST the raw message to the application, as mail_room's ``postback`` does.

    GitLab's defaults: a JWT (HS256, issuer ``gitlab-mailroom``) in ``Gitlab-Mailroom-Api-Request`` signed
    with the Base64 key in ``secret_file``, body ``text/plain``. The other authentications of mail_room's
    postback can replace or join the JWT: HTTP basic auth (``username`` + ``password_file``, e.g. Rails
    Action Mailbox's relay ingress) or a token (``token_file``, sent as ``Authorization: Bearer TOKEN``).
    """

    url: str
    secret_file: SecretFile | None = Field(
        default=None, description="file holding the Base64 JWT signing key; unset: no JWT header"
    )
    jwt_header: str = Field(default="Gitlab-Mailroom-Api-Request", min_length=1)
    jwt_issuer: str = Field(default="gitlab-mailroom", min_length=1)
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    content_type: str = Field(default="text/plain", min_length=1)
    username: str | None = Field(default=None, description="HTTP basic auth user (needs password_file)")
    password_file: SecretFile | None = Field(default=None, description="HTTP basic auth password, in a file")
    token_file: SecretFile | None = Field(default=None, description="sent as Authorization: SCHEME TOKEN")
    token_scheme: str = Field(default="Bearer", pattern=r"^[A-Za-z][A-Za-z0-9._~+/-]*$")
    timeout: float = Field(default=30.0, gt=0)
    allow_insecure: bool = Field(default=False, description="required for an http:// url off loopback")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # The messages never repeat the URL: it may hold the very password they refuse.
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if "@" in urlsplit(value).netloc:
            raise ValueError(
                "must not contain user:password@ (it would be logged with every failed call);"
                " use username and password_file for basic auth"
            )
        return value

    def _problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if not self.allow_insecure and clear_text_off_loopback(self.url):
            message = "http:// sends every message in clear text: use https://, or set allow_insecure: true"
            problems.append(("url", message))
        if (self.username is None) != (self.password_file is None):
            problems.append(("username", "basic auth needs both username and password_file"))
        if self.token_file is not None and self.password_file is not None:
            problems.append(("token_file", "both travel in Authorization: give token_file or basic auth"))
        if self.secret_file is None and self.password_file is None and self.token_file is None:
            problems.append(("", "needs secret_file (a JWT), username/password_file or token_file"))
        return problems


class MailboxKind(StrEnum):
    """Where a mailbox's mail comes from: the ``kind`` of its configuration and of its source."""

    IMAP = "imap"
    GRAPH = "graph"


class AuthMethod(StrEnum):
    PASSWORD = "password"  # noqa: S105 - the name of a method, not a secret
    OAUTH2 = "oauth2"


MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"


class ClientCredentialsConfig(_Model):
    """OAuth2 client-credentials grant (RFC 6749 4.4); Microsoft's identity platform by default."""

    tenant: str | None = Field(default=None, description="directory (tenant) id or domain")
    client_id: str
    client_secret_file: SecretFile
    scope: str = "https://outlook.office365.com/.default"
    authority: str = MICROSOFT_AUTHORITY
    token_url: str | None = Field(default=None, description="default {authority}/{tenant}/oauth2/v2.0/token")

    @property
    def effective_token_url(self) -> str:
        if self.token_url is not None:
            return self.token_url
        return f"{self.authority.rstrip('/')}/{self.tenant}/oauth2/v2.0/token"

    def _problems(self) -> list[tuple[str, str]]:
        problems = []
        if self.tenant is None and self.token_url is None:
            problems.append(("tenant", "required (or give token_url)"))
        return (
            problems
            + _http_url_problem("authority", self.authority)
            + _http_url_problem("token_url", self.token_url)
        )


class RefreshTokenConfig(_Model):
    """OAuth2 refresh-token grant (RFC 6749 section 6), as Google documents it for IMAP."""

    client_id: str
    client_secret_file: SecretFile | None = None
    refresh_token_file: SecretFile
    token_url: str = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
    scope: str | None = Field(default=None, description="default: the scope the refresh token was granted")

    def _problems(self) -> list[tuple[str, str]]:
        return _http_url_problem("token_url", self.token_url)


class OAuth2Config(_Model):
    """Where an IMAP mailbox's OAuth2 access tokens come from (exactly one source)."""

    token_file: SecretFile | None = Field(default=None, description="a file holding the current access token")
    client_credentials: ClientCredentialsConfig | None = None
    refresh_token: RefreshTokenConfig | None = None
    mechanism: Literal["auto", "xoauth2", "oauthbearer"] = Field(
        default="auto", description="auto: XOAUTH2 if the server offers it, else OAUTHBEARER"
    )
    refresh_margin: float = Field(default=300.0, ge=0, description="seconds before expiry to get a new token")

    def _problems(self) -> list[tuple[str, str]]:
        sources = [self.token_file, self.client_credentials, self.refresh_token]
        if sum(source is not None for source in sources) != 1:
            return [("", "set exactly one of token_file, client_credentials or refresh_token")]
        return []


class GraphConfig(_Model):
    """A Microsoft 365 mailbox read through Microsoft Graph (application permission Mail.ReadWrite)."""

    tenant: str = Field(description="directory (tenant) id or domain")
    client_id: str
    client_secret_file: SecretFile
    user: str = Field(description="the mailbox: user principal name or user id")
    authority: str = MICROSOFT_AUTHORITY
    token_url: str | None = Field(default=None, description="default {authority}/{tenant}/oauth2/v2.0/token")
    scope: str = "https://graph.microsoft.com/.default"
    base_url: str = Field(default="https://graph.microsoft.com/v1.0", description="change only for tests")
    page_size: int = Field(default=50, ge=1, le=1000, description="messages per delta page")

    def client_credentials(self) -> ClientCredentialsConfig:
        return ClientCredentialsConfig(
            tenant=self.tenant,
            client_id=self.client_id,
            client_secret_file=self.client_secret_file,
            scope=self.scope,
            authority=self.authority,
            token_url=self.token_url,
        )

    def _problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for name in ("authority", "token_url", "base_url"):
            problems += _http_url_problem(name, getattr(self, name))
        return problems


class MailboxBase(_Model):
    """What every mailbox has, whatever its source: its name, and what to do with its mail."""

    # Letters, digits, _ and -: the name goes into RQ job ids as it is (no two names may map to one id).
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    folder: str = "INBOX"
    address: str = DEFAULT_ADDRESS
    queue: str = DEFAULT_QUEUE
    handler: str = Field(default="log", description="log, webhook, or an import string module:callable")
    auto_replies: Literal["skip", "deliver"] = Field(
        default="skip", description="skip: auto-replies and bounces are recorded but never reach the handler"
    )
    webhook: WebhookConfig | None = None
    after_delivery: str = "seen"
    poll_interval: float = Field(default=60.0, gt=0)
    batch_size: int = Field(
        default=200, ge=1, le=5000, description="messages per fetch and per Redis transaction"
    )
    max_message_size: int = Field(
        default=25 * 1024 * 1024, gt=0, description="bytes; larger messages are parked with their header only"
    )
    timeout: float = Field(default=30.0, gt=0, description="connect and command timeout, seconds")
    retries: tuple[int, ...] = Field(
        default=(10, 60, 300),
        description="handler retry delays in seconds (needs workers with --with-scheduler)",
    )

    @property
    def max_wait(self) -> float:
        """The longest a healthy watcher of this mailbox waits between two turns (health's bound)."""
        return self.poll_interval

    @property
    def after_delivery_action(self) -> tuple[AfterDeliveryAction, str | None]:
        action, _, folder = self.after_delivery.partition(":")
        return AfterDeliveryAction(action), folder or None

    @field_validator("address")
    @classmethod
    def _template(cls, value: str) -> str:
        # A plain address (no %{key}) is a catch-all: its mail has no reply key.
        if value.count("%{key}") > 1 or "@" not in value:
            raise ValueError("must be an address with %{key} at most once, like incoming+%{key}@example.com")
        if "%{key}" in value.rsplit("@", 1)[1]:
            raise ValueError("%{key} must be in the local part (before the @)")
        return value

    @field_validator("after_delivery")
    @classmethod
    def _after_delivery(cls, value: str) -> str:
        action, sep, folder = value.partition(":")
        if action in ("seen", "delete") and not sep:
            return value
        if action == "move" and folder:
            return value
        raise ValueError("must be seen, delete or move:<folder>")

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        if value in BUILTIN_HANDLERS or ":" in value:
            return value
        raise ValueError("must be log, webhook, or an import string like myapp.mail:handle")

    def _problems(self) -> list[tuple[str, str]]:
        if self.handler == "webhook" and self.webhook is None:
            return [("webhook", "handler: webhook needs a webhook: {url, secret_file} section")]
        return []


# Extra SEARCH keys a mailbox may give (RFC 3501 6.4.4): each only narrows which messages are offered,
# by what the message is, so a message that does not match now never matches later by chance.
_SEARCH_ARGS = {
    **dict.fromkeys(("ALL", "UNSEEN", "ANSWERED", "UNANSWERED", "FLAGGED", "UNFLAGGED", "DRAFT"), 0),
    **dict.fromkeys(("UNDRAFT", "UNDELETED"), 0),
    **dict.fromkeys(("FROM", "TO", "CC", "BCC", "SUBJECT", "BODY", "TEXT", "KEYWORD", "UNKEYWORD"), 1),
    **dict.fromkeys(("SINCE", "BEFORE", "ON", "SENTSINCE", "SENTBEFORE", "SENTON"), 1),
    **dict.fromkeys(("LARGER", "SMALLER", "X-GM-RAW"), 1),
    "HEADER": 2,
}
_SEARCH_REFUSED = {
    **dict.fromkeys(
        ("NEW", "OLD", "RECENT"),
        "\\Recent is given to one session only: mail another session saw first would never match and "
        "would wait in the folder forever; use UNSEEN",
    ),
    **dict.fromkeys(
        ("SEEN", "DELETED"), "mailroom marks handled mail \\Seen or \\Deleted: only done mail would match"
    ),
    **dict.fromkeys(("NOT", "OR", "UID"), "only plain keys, all ANDed, are allowed (no NOT, OR or UID sets)"),
}


def search_keys(value: str) -> list[str]:
    """``search:`` -> SEARCH criteria, or ValueError naming the first key refused and why."""
    try:
        tokens = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot be split into SEARCH keys: {exc}") from None
    if not value.isascii():
        raise ValueError("must be ASCII (SEARCH is sent without CHARSET)")
    out: list[str] = []
    i = 0
    while i < len(tokens):
        key = tokens[i].upper()
        if key in _SEARCH_REFUSED:
            raise ValueError(f"{key}: {_SEARCH_REFUSED[key]}")
        if key not in _SEARCH_ARGS:
            raise ValueError(
                f"{tokens[i]!r} is not a SEARCH key mailroom accepts ({', '.join(_SEARCH_ARGS)})"
            )
        count = _SEARCH_ARGS[key]
        args = tokens[i + 1 : i + 1 + count]
        if len(args) != count:
            raise ValueError(f"{key} needs {count} argument(s)")
        out += [key, *args]
        i += 1 + count
    return out


class ImapMailbox(MailboxBase):
    """A mailbox on an IMAP server: IDLE (or polling) over one connection, password or OAuth2 login."""

    kind: Literal[MailboxKind.IMAP] = MailboxKind.IMAP
    host: str = Field(description="the IMAP server")
    port: int | None = Field(default=None, ge=1, le=65535, description="default 993 for tls, else 143")
    security: Security = Security.TLS
    allow_insecure: bool = Field(default=False, description="required for security: none off loopback")
    verify: bool = True
    ca_file: ReadableFile | None = None
    username: str = Field(description="IMAP login (with oauth2: the mailbox address)")
    auth: AuthMethod = Field(default=AuthMethod.PASSWORD, description="IMAP login: password or oauth2")
    password: SecretStr | None = None
    password_file: SecretFile | None = None
    oauth2: OAuth2Config | None = None
    idle_timeout: float = Field(default=300.0, gt=0, le=MAX_IDLE_TIMEOUT)
    keepalive_interval: float = Field(
        default=15.0,
        ge=0,
        description="renew IDLE this often (0: at idle_timeout only); the round trip detects dead links",
    )
    expunge_deleted: bool = Field(
        default=True,
        description="after_delivery delete (or move without MOVE): UID EXPUNGE the batch; false: leave it "
        "flagged \\Deleted for the server's own expunge policy",
    )
    search: str | None = Field(
        default=None,
        description="extra IMAP SEARCH keys ANDed with mailroom's own (which find the mail not yet done)",
    )

    @field_validator("search")
    @classmethod
    def _search(cls, value: str | None) -> str | None:
        if value is not None:
            search_keys(value)  # raises ValueError naming the key that is refused and why
        return value

    @property
    def search_criteria(self) -> list[str]:
        """``search`` as imapclient SEARCH criteria (each item quoted by imapclient where needed)."""
        return search_keys(self.search) if self.search else []

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 993 if self.security is Security.TLS else 143

    @property
    def max_wait(self) -> float:
        return max(self.poll_interval, min(self.idle_timeout, self.keepalive_interval or self.idle_timeout))

    def read_password(self) -> str:
        """The password, read fresh from ``password_file`` on each call so rotated secrets take effect."""
        password = _read_secret(self.password, self.password_file)
        assert password is not None  # guaranteed by _problems for auth: password
        return password

    def _problems(self) -> list[tuple[str, str]]:
        problems = super()._problems()
        if self.auth is AuthMethod.OAUTH2:
            if self.oauth2 is None:
                problems.append(("oauth2", "auth: oauth2 needs an oauth2: section (token_file, ...)"))
            if self.password is not None or self.password_file is not None:
                problems.append(("password", "not used with auth: oauth2; remove password/password_file"))
        elif self.oauth2 is not None:
            problems.append(("auth", "an oauth2: section is given: set auth: oauth2"))
        elif (self.password is None) == (self.password_file is None):
            problems.append(("password", "set exactly one of password or password_file"))
        if self.security is Security.NONE and not (self.allow_insecure or _is_loopback(self.host)):
            problems.append(("security", _CLEARTEXT))
        return problems


class GraphMailbox(MailboxBase):
    """A Microsoft 365 mailbox read through Microsoft Graph: delta queries every ``poll_interval``."""

    kind: Literal[MailboxKind.GRAPH]
    graph: GraphConfig


def _mailbox_kind(value: object) -> str:
    """The discriminator: ``kind``, imap when absent so configurations from before Graph keep working."""
    kind = value.get("kind", MailboxKind.IMAP) if isinstance(value, dict) else getattr(value, "kind", None)
    return str(kind)


# One mailbox to watch: which model applies is chosen by `kind`. A new source adds its model here.
MailboxConfig = Annotated[
    Annotated[ImapMailbox, Tag(MailboxKind.IMAP.value)]
    | Annotated[GraphMailbox, Tag(MailboxKind.GRAPH.value)],
    Discriminator(
        _mailbox_kind,
        custom_error_type="mailbox_kind",
        custom_error_message=f"kind must be one of {', '.join(MailboxKind)}",
    ),
]
MAILBOX_KINDS = frozenset(MailboxKind)


class ProviderConfig(_Model):
    """The mail provider's (Mailgun's) side: signed delivery-failure webhooks and the stats API."""

    signing_key: SecretStr | None = Field(
        default=None, description="webhook signing key (prefer signing_key_file or the env variable)"
    )
    signing_key_file: SecretFile | None = Field(
        default=None, description="file holding the webhook signing key"
    )
    webhook_path: str = "/mailgun/webhooks"
    webhook_host: str = "127.0.0.1"
    webhook_port: int = Field(default=8025, ge=0, le=65535)
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus for webhooks")
    timestamp_tolerance: int = Field(default=15 * 60, gt=0, description="seconds a signature stays valid")
    replay_ttl: int = Field(default=3600, gt=0, description="seconds a seen token is remembered")
    temporary_failure_threshold: int = Field(default=5, ge=1)
    temporary_failure_window: int = Field(default=24 * 3600, gt=0, description="seconds")
    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    request_timeout: float = Field(default=10.0, gt=0, description="seconds to receive a request body")
    api_key: SecretStr | None = Field(default=None, description="Mailgun API key: enables stats collection")
    api_key_file: SecretFile | None = None
    api_base: str = "https://api.mailgun.net"
    stats_domains: tuple[str, ...] = ()
    stats_interval: float = Field(default=300.0, gt=0, description="seconds between stats polls")

    def read_signing_key(self) -> str | None:
        return _read_secret(self.signing_key, self.signing_key_file)

    def read_api_key(self) -> str | None:
        return _read_secret(self.api_key, self.api_key_file)

    @field_validator("webhook_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    def _problems(self) -> list[tuple[str, str]]:
        problems = _one_of(("signing_key", "signing_key_file"), (self.signing_key, self.signing_key_file))
        problems += _http_url_problem("api_base", self.api_base)
        if self.replay_ttl <= 2 * self.timestamp_tolerance:
            problems.append(
                ("replay_ttl", "must be longer than twice timestamp_tolerance (the replay window)")
            )
        return problems


class SmtpConfig(_Model):
    """Authenticated SMTP for outbound mail (rejection replies, the application's notifications)."""

    host: str
    port: int | None = Field(default=None, ge=1, le=65535, description="default 465 for tls, 587 otherwise")
    security: Security = Security.STARTTLS
    verify: bool = True
    ca_file: ReadableFile | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: SecretFile | None = None
    from_address: str = Field(description="the envelope and From address of mail mailroom sends")
    timeout: float = Field(default=30.0, gt=0)
    allow_insecure: bool = Field(default=False, description="required for security: none off loopback")

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 465 if self.security is Security.TLS else 587

    def read_password(self) -> str | None:
        return _read_secret(self.password, self.password_file)

    @field_validator("from_address")
    @classmethod
    def _from_address(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError("must be an email address")
        return value

    def _problems(self) -> list[tuple[str, str]]:
        problems = _one_of(("password", "password_file"), (self.password, self.password_file))
        if self.username is not None and self.password is None and self.password_file is None:
            problems.append(("username", "needs password or password_file"))
        if self.security is Security.NONE and not self.allow_insecure and not _is_loopback(self.host):
            problems.append(("security", _CLEARTEXT))
        return problems


RejectionReason = Literal["no_key", "unknown_key", "sender_not_allowed", "too_large"]


class RejectionsConfig(_Model):
    """Rejection replies: tell a sender why their message was not handled (needs the smtp section)."""

    enabled: bool = False
    reasons: tuple[RejectionReason, ...] = ("no_key", "unknown_key", "sender_not_allowed", "too_large")
    once_per: int = Field(default=24 * 3600, gt=0, description="seconds: one reply per sender and reason")
    message_id_host: str | None = Field(default=None, description="default: the from_address domain")
    trusted_authserv_ids: tuple[str, ...] = Field(
        default=(),
        description="authserv-ids of your receiving servers' Authentication-Results: a reply goes to the "
        "envelope sender only when one of them shows SPF or DKIM passing for it (none: never sent)",
    )


class WorkerConfig(_Model):
    """How ``mailroom worker`` runs handlers (docs/handlers.md says which isolation to choose)."""

    isolation: Literal["thread", "fork"] = Field(
        default="thread",
        description="thread: jobs run concurrently in threads of one process; fork: RQ's Worker, a "
        "work horse process per job, one at a time",
    )
    concurrency: int = Field(
        default=10, ge=1, le=1000, description="jobs at once per worker process (thread)"
    )
    shutdown_timeout: float | None = Field(
        default=None,
        ge=0,
        description="seconds running jobs get to finish after SIGTERM (thread); default: job_timeout, "
        "so a stop never cuts a handler off mid-call (the pod's grace period must be longer)",
    )


class DomainCheckConfig(_Model):
    """What `mailroom domain check` expects to find in DNS (Mailgun's defaults)."""

    mx_hosts: tuple[str, ...] = ("mxa.mailgun.org", "mxb.mailgun.org")
    spf_include: str = "mailgun.org"
    dkim_selector: str = "smtp"
    tracking_host: str = "email"
    tracking_target: str = "mailgun.org"
    nameserver: str | None = Field(default=None, description="default: the system resolver")
    port: int = Field(default=53, ge=1, le=65535)
    timeout: float = Field(default=5.0, gt=0)


class Settings(BaseSettings):
    """The whole configuration of one mailroom deployment."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    mailboxes: tuple[MailboxConfig, ...] = ()
    provider: ProviderConfig | None = None
    smtp: SmtpConfig | None = None
    rejections: RejectionsConfig = RejectionsConfig()
    domain_check: DomainCheckConfig = DomainCheckConfig()
    worker: WorkerConfig = WorkerConfig()
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    http_port: int | None = Field(default=None, ge=0, le=65535, description="health and metrics server")
    job_timeout: int = Field(default=300, gt=0, description="seconds a handler may run")
    result_ttl: int = Field(default=24 * 3600, ge=0, description="seconds finished jobs are kept")
    failure_ttl: int = Field(default=30 * 24 * 3600, gt=0, description="seconds failed jobs are kept")
    keep_handled_raw: bool = Field(
        default=False, description="keep a handled message's raw bytes in its finished job (result_ttl)"
    )
    guard_ttl: int = Field(
        default=90 * 24 * 3600, gt=0, description="seconds a (mailbox, UIDVALIDITY, UID) stays claimed"
    )
    history_ttl: int = Field(
        default=7 * 24 * 3600, ge=0, description="seconds `mailroom history` remembers a message (0: off)"
    )
    history_max_entries: int = Field(
        default=100_000, gt=0, description="messages `mailroom history` remembers at most"
    )
    sentry_dsn: SecretStr | None = Field(default=None, description="Sentry DSN (or SENTRY_DSN); unset: off")
    lease_ttl: float | None = Field(
        default=None,
        gt=0,
        description="seconds a watcher replica holds a mailbox's lease; unset: every replica watches all",
    )
    redis_min_replica_acks: int | None = Field(
        default=None,
        ge=0,
        description="replicas that must acknowledge each enqueue (WAIT); unset: 1 if replicas are attached",
    )
    # At most 5: the enqueue's WAIT must answer within the client's 10 s socket timeout, with room for
    # the script before it.
    redis_replica_ack_timeout: float = Field(
        default=2.0, gt=0, le=5, description="seconds an enqueue waits for those acknowledgements (max 5)"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
            raise ValueError("must be a redis://, rediss://, unix:// or redis+sentinel:// URL")
        return value

    @model_validator(mode="after")
    def _no_problems(self) -> Self:
        problems: list[tuple[str, str]] = []
        names = [m.name for m in self.mailboxes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(("", f"mailbox names must be unique: {', '.join(duplicates)}"))
        if self.rejections.enabled and self.smtp is None:
            problems.append(("rejections", "enabled needs an smtp section to send them"))
        _problems_found("Settings", problems)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file and the environment are merged by load_settings() and arrive as init kwargs,
        # because pydantic-settings cannot address list items (MAILROOM_MAILBOXES__0__...) itself.
        return (init_settings,)

    def mailbox(self, name: str) -> MailboxConfig:
        for mailbox in self.mailboxes:
            if mailbox.name == name:
                return mailbox
        raise KeyError(name)

    def worker_shutdown_timeout(self) -> float:
        """How long a stopping worker lets running handlers finish (by default a job's own time limit)."""
        if self.worker.shutdown_timeout is not None:
            return self.worker.shutdown_timeout
        return float(self.job_timeout)

    def queues(self) -> list[str]:
        return sorted({m.queue for m in self.mailboxes}) or [DEFAULT_QUEUE]


def load_settings(
    path: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Read the YAML file (``path`` or ``$MAILROOM_CONFIG``), overlay the environment, validate.

    Only variables naming a field are settings (see config_env: platforms inject others); a variable
    that looks like a misspelt field is a warning, one line to ``warn`` (default: stderr).
    Raises ConfigError with one line per problem, naming the variable when one set the bad value.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_PATH_ENV)
    data: dict[str, Any] = {}
    if path:
        from_env = f"{CONFIG_PATH_ENV}: " if str(path) == environ.get(CONFIG_PATH_ENV) else ""
        data = _read_yaml(Path(path), from_env)
    env = settings_from_env(environ, Settings.model_fields, ENV_PREFIX, NOT_SETTINGS)
    for line in env.warnings:
        (warn or _warn_stderr)(f"config warning: {line}")
    for override in env.overrides:
        _overlay(data, list(override.path), override.value, override.env_name)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, env)) from None


def _warn_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _read_yaml(path: Path, where: str = "") -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{where}config file {path}: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{where}config file {path}: not valid YAML: {exc}".replace("\n", " ")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{where}config file {path}: the top level must be a mapping of settings"])
    return data


def _overlay(data: Any, path: list[str], raw: str, env_name: str) -> None:
    """Set data[path...] = value, walking into dicts by key and lists by index."""
    value: Any = raw
    if raw[:1] in "[{":
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError([f"{env_name}: not valid JSON"]) from None
    node = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError([f"{env_name}: no list item {part} to override"])
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part not in node or not isinstance(node[part], (dict, list)):
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError([f"{env_name}: cannot set a field inside a plain value"])


def _problems(exc: ValidationError, env: EnvSettings | None = None) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        if loc[:1] == ("mailboxes",) and len(loc) > 2 and loc[2] in MAILBOX_KINDS:
            loc = loc[:2] + loc[3:]  # pydantic names the kind a mailbox was read as; the field says enough
        where = ".".join(str(part) for part in loc) or "config"
        message = "required" if error["type"] == "missing" else error["msg"].removeprefix("Value error, ")
        source = env.source_of(loc) if env is not None and loc else None
        problems.append(f"{where}: {message}" + (f" (set by {source})" if source else ""))
    return problems


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets replaced by '**********'.

    SecretStr fields dump masked already; every other string that is a URL (redis_url, a Sentinel URL,
    webhook and token URLs) loses its userinfo password and any password-like query parameter.
    """
    data: dict[str, Any] = _mask_urls(settings.model_dump(mode="json"))
    if data.get("sentry_dsn") is not None:
        data["sentry_dsn"] = MASK
    return data


def _mask_urls(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _mask_urls(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_mask_urls(value) for value in node]
    if isinstance(node, str) and "://" in node:
        return mask_url(node)
    return node


# A query parameter whose name says it carries a secret: ?password=, ?sentinel_password=, ?token=, ...
_SECRET_PARAMETER = re.compile(r"([?&][^=&#]*(?:pass|secret|token|key|auth)[^=&#]*=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with its userinfo password (the whole userinfo if it has no ``:``, as a token often is)
    and password-like query parameters replaced by '**********'."""
    url = _SECRET_PARAMETER.sub(lambda match: match.group(1) + MASK, url)
    scheme, sep, rest = url.partition("://")
    # The last @ ends the userinfo: a raw password may hold @ or / (the secret query values are gone).
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user}:{MASK}@{host}" if colon else f"{scheme}{sep}{MASK}@{host}"
