"""Configuration: one YAML file, every field overridable by ``MAILROOM_*`` environment variables.

This is the only module that reads environment variables, the YAML file and secret files.

Precedence, highest first: keyword arguments, environment variables, the YAML file, defaults.
Nested fields use ``__``; list items are addressed by index, so
``MAILROOM_MAILBOXES__0__PASSWORD_FILE=/run/secrets/imap`` sets the first mailbox's password file.
A whole list can also be given as JSON (``MAILROOM_MAILBOXES='[{"name": ...}]'``).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mailroom.errors import ConfigError

ENV_PREFIX = "MAILROOM_"
CONFIG_PATH_ENV = "MAILROOM_CONFIG"
MAX_IDLE_TIMEOUT = 29 * 60  # RFC 2177: servers may drop an IDLE after 30 minutes
DEFAULT_QUEUE = "incoming_email"
DEFAULT_ADDRESS = "incoming+%{key}@example.com"
MASK = "*" * 10


class Security(StrEnum):
    TLS = "tls"
    STARTTLS = "starttls"
    NONE = "none"


class AfterDeliveryAction(StrEnum):
    SEEN = "seen"
    DELETE = "delete"
    MOVE = "move"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def read_secret_file(path: Path) -> str:
    """A secret from a mounted file, without the trailing newline editors and ``kubectl`` add."""
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebhookConfig(_Model):
    """The ``webhook`` handler: POST the raw message to the application, GitLab mail_room style."""

    url: str
    secret_file: Path = Field(description="file holding the Base64 HS256 signing secret")
    timeout: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class MailboxConfig(_Model):
    """One IMAP mailbox to watch, and what to do with its mail."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    host: str
    port: int | None = Field(default=None, ge=1, le=65535, description="default 993 for tls, else 143")
    security: Security = Security.TLS
    allow_insecure: bool = Field(default=False, description="required for security: none off loopback")
    verify: bool = True
    ca_file: Path | None = None
    username: str
    password: SecretStr | None = None
    password_file: Path | None = None
    folder: str = "INBOX"
    address: str = DEFAULT_ADDRESS
    queue: str = DEFAULT_QUEUE
    handler: str = Field(default="log", description="log, webhook, or an import string module:callable")
    webhook: WebhookConfig | None = None
    after_delivery: str = "seen"
    idle_timeout: float = Field(default=300.0, gt=0, le=MAX_IDLE_TIMEOUT)
    poll_interval: float = Field(default=60.0, gt=0)
    batch_size: int = Field(
        default=200, ge=1, le=5000, description="UIDs per FETCH and per Redis transaction"
    )
    max_message_size: int = Field(
        default=25 * 1024 * 1024, gt=0, description="bytes; larger messages are parked with their header only"
    )
    keepalive_interval: float = Field(
        default=15.0,
        ge=0,
        description="renew IDLE this often (0: at idle_timeout only); the round trip detects dead links",
    )
    timeout: float = Field(default=30.0, gt=0, description="connect and command timeout, seconds")
    retries: tuple[int, ...] = Field(
        default=(10, 60, 300),
        description="handler retry delays in seconds (needs workers with --with-scheduler)",
    )

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 993 if self.security is Security.TLS else 143

    @property
    def after_delivery_action(self) -> tuple[AfterDeliveryAction, str | None]:
        action, _, folder = self.after_delivery.partition(":")
        return AfterDeliveryAction(action), folder or None

    def read_password(self) -> str:
        """The password, read fresh from ``password_file`` on each call so rotated secrets take effect."""
        if self.password_file is not None:
            return read_secret_file(self.password_file)
        assert self.password is not None  # guaranteed by the validator
        return self.password.get_secret_value()

    @field_validator("address")
    @classmethod
    def _template(cls, value: str) -> str:
        if value.count("%{key}") != 1 or "@" not in value:
            raise ValueError("must contain %{key} once and an @, like incoming+%{key}@example.com")
        if "%{key}" not in value.split("@", 1)[0]:
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
        if value in ("log", "webhook") or ":" in value:
            return value
        raise ValueError("must be log, webhook, or an import string like myapp.mail:handle")

    @model_validator(mode="after")
    def _consistent(self) -> MailboxConfig:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of password or password_file")
        if self.password_file is not None and not self.password_file.is_file():
            raise ValueError(f"password_file {self.password_file} is not a readable file")
        if self.security is Security.NONE and not self.allow_insecure and not _is_loopback(self.host):
            raise ValueError(
                "security: none sends the password in clear text; set allow_insecure: true to accept that"
            )
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"ca_file {self.ca_file} is not a readable file")
        if self.handler == "webhook" and self.webhook is None:
            raise ValueError("handler: webhook needs a webhook: {url, secret_file} section")
        if self.webhook is not None and not self.webhook.secret_file.is_file():
            raise ValueError(f"webhook.secret_file {self.webhook.secret_file} is not a readable file")
        return self


class Settings(BaseSettings):
    """The whole configuration of one mailroom deployment."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    mailboxes: tuple[MailboxConfig, ...] = ()
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    http_port: int | None = Field(default=None, ge=0, le=65535, description="health and metrics server")
    job_timeout: int = Field(default=300, gt=0, description="seconds a handler may run")
    result_ttl: int = Field(default=24 * 3600, ge=0, description="seconds finished jobs are kept")
    failure_ttl: int = Field(default=30 * 24 * 3600, gt=0, description="seconds failed jobs are kept")
    guard_ttl: int = Field(
        default=90 * 24 * 3600, gt=0, description="seconds a (mailbox, UIDVALIDITY, UID) stays claimed"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
            raise ValueError("must be a redis://, rediss://, unix:// or redis+sentinel:// URL")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [m.name for m in self.mailboxes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"mailbox names must be unique: {', '.join(duplicates)}")
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

    def queues(self) -> list[str]:
        return sorted({m.queue for m in self.mailboxes}) or [DEFAULT_QUEUE]


def load_settings(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the YAML file (``path`` or ``$MAILROOM_CONFIG``), overlay the environment, validate.

    Raises ConfigError with one line per problem.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_PATH_ENV)
    data: dict[str, Any] = {}
    if path:
        data = _read_yaml(Path(path))
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name != CONFIG_PATH_ENV:
            _overlay(data, name[len(ENV_PREFIX) :].lower().split("__"), value, name)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"config file {path}: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"config file {path}: not valid YAML: {exc}".replace("\n", " ")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config file {path}: the top level must be a mapping of settings"])
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


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "config"
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return problems


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, secrets replaced by '**********'."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    for mailbox in data["mailboxes"]:
        if mailbox.get("password") is not None:
            mailbox["password"] = MASK
    data["redis_url"] = _mask_url_password(data["redis_url"])
    return data


def _mask_url_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:{MASK}@{host}"
