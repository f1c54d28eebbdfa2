"""Fail fast: what a process checks at start (and ``check-config`` prints) beyond the config models.

The models check each value's shape; this reads what the processes would otherwise first read when a
message arrives: every ``*_file`` (present, readable, not empty), the webhook signing secret (Base64),
and every ``module:callable`` handler (imports, is callable). A config that passes here cannot fail
every message for a reason known at start. One problem per line, each naming its field as the config
errors do (``mailboxes.0.handler: ...``); no line ever holds a secret's content.
"""

from __future__ import annotations

import base64
import binascii
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mailroom.config import BUILTIN_HANDLERS, MailboxConfig, Settings, read_secret_file


def problems(settings: Settings) -> list[str]:
    """Every problem found, one line each; empty when the processes can start."""
    found: list[tuple[str, str]] = []
    for index, mailbox in enumerate(settings.mailboxes):
        found += _file_problems(mailbox, f"mailboxes.{index}.")
        found += [(f"mailboxes.{index}.{field}", problem) for field, problem in _mailbox_problems(mailbox)]
    found += _file_problems(settings, "", skip="mailboxes")
    return [f"{field}: {problem}" for field, problem in found]


def _file_problems(model: BaseModel, where: str, skip: str = "") -> Iterator[tuple[str, str]]:
    """Each ``*_file`` field of the model and of the models inside it, at its dotted location."""
    for name in type(model).model_fields:
        if name == skip:
            continue
        value = getattr(model, name)
        field = f"{where}{name}"
        if isinstance(value, BaseModel):
            yield from _file_problems(value, f"{field}.")
        elif isinstance(value, tuple):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _file_problems(item, f"{field}.{index}.")
        elif isinstance(value, Path) and name.endswith("_file"):
            problem = _unreadable(value)
            if problem is not None:
                yield field, problem


def _unreadable(path: Path) -> str | None:
    try:
        text = read_secret_file(path)
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return f"{path} is not UTF-8 text"
    if not text.strip():
        return f"{path} is empty"
    return None


def _mailbox_problems(mailbox: MailboxConfig) -> Iterator[tuple[str, str]]:
    path = mailbox.webhook.secret_file if mailbox.webhook is not None else None
    if path is not None:
        if _unreadable(path) is None and signing_secret(path) is None:
            yield "webhook.secret_file", f"{path} does not hold Base64 text (the HS256 signing secret)"
    if mailbox.handler not in BUILTIN_HANDLERS:
        problem = handler_problem(mailbox.handler)
        if problem is not None:
            yield "handler", problem


def signing_secret(path: Path) -> bytes | None:
    """The webhook signing secret the worker will use, or None when the file is not Base64."""
    try:
        secret = base64.b64decode(read_secret_file(path).strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return secret or None


def handler_problem(spec: str) -> str | None:
    """Why ``package.module:callable`` cannot be a handler, or None when it can."""
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:  # noqa: BLE001 - any error importing the application's module is the answer
        return f"{spec} cannot be imported: {type(exc).__name__}: {exc}"
    if not callable(target):
        return f"{spec} is not callable"
    return None
