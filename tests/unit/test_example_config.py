"""config/mailroom.example.yml loads, and documents every field of the config models."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from mailroom.config import (
    GraphConfig,
    GraphMailbox,
    ImapMailbox,
    OAuth2Config,
    Settings,
    WebhookConfig,
    WorkerConfig,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "mailroom.example.yml"
COMPOSE_CONFIG = ROOT / "config" / "mailroom.compose.yml"


@pytest.fixture
def in_tmp_with_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example names relative secret files; create them in a scratch working directory."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "imap-password").write_text("imap-secret\n")
    (secrets / "webhook-secret").write_text("c2lnbmluZy1rZXk=\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_example_loads(in_tmp_with_secrets: Path) -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert [m.name for m in settings.mailboxes] == ["support", "app"]
    support, app = settings.mailboxes
    assert support.read_password() == "change-me"
    assert app.read_password() == "imap-secret"
    assert app.effective_port == 143
    assert app.webhook is not None and app.webhook.url.startswith("https://")
    assert settings.queues() == ["app_email", "incoming_email"]


def _models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    """The model and every model its fields can hold (each mailbox kind, every nested section)."""
    yield model
    for field in model.model_fields.values():
        yield from _models_in(field.annotation)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from _models(annotation)
    for arg in get_args(annotation):
        yield from _models_in(arg)


def test_example_documents_every_field() -> None:
    text = EXAMPLE.read_text()
    models = set(_models(Settings))
    assert {ImapMailbox, GraphMailbox, GraphConfig, OAuth2Config, WebhookConfig, WorkerConfig} <= models
    missing = sorted(
        f"{model.__name__}.{name}"
        for model in models
        for name in model.model_fields
        if not re.search(rf"^\s*(#[\s#]*)?(- )?{re.escape(name)}:", text, re.MULTILINE)
    )
    assert not missing, f"document these in {EXAMPLE.name}: {', '.join(missing)}"


def test_example_env_override(in_tmp_with_secrets: Path) -> None:
    settings = load_settings(
        EXAMPLE,
        environ={"MAILROOM_REDIS_URL": "redis://redis:6379/1", "MAILROOM_MAILBOXES__0__PORT": "1993"},
    )
    assert settings.redis_url == "redis://redis:6379/1"
    assert settings.mailboxes[0].effective_port == 1993


def test_compose_config_loads() -> None:
    settings = load_settings(COMPOSE_CONFIG, environ={})
    (mailbox,) = settings.mailboxes
    assert mailbox.host == "greenmail"
    assert mailbox.effective_port == 3143
    assert mailbox.allow_insecure
