"""Handlers by name: the built-in ``log`` and ``webhook``, or an application's ``module:callable``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from mailroom.config import MailboxConfig
from workers.handlers import log as log_handler
from workers.handlers.webhook import WebhookHandler
from workers.incoming import IncomingEmail

Handler = Callable[[IncomingEmail], Any]


class HandlerNotFound(LookupError):
    pass


def import_handler(spec: str) -> Handler:
    """``package.module:callable`` -> the callable."""
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise HandlerNotFound(f"handler {spec!r} cannot be imported: {exc}") from exc
    if not callable(target):
        raise HandlerNotFound(f"handler {spec!r} is not callable")
    handler: Handler = target
    return handler


def handler_for(mailbox: MailboxConfig) -> Handler:
    if mailbox.handler == "log":
        return log_handler.handle
    if mailbox.handler == "webhook":
        assert mailbox.webhook is not None  # guaranteed by the config validator
        return WebhookHandler(mailbox.webhook)
    return import_handler(mailbox.handler)
