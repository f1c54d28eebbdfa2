"""The ``mailroom`` command group and what every subcommand shares.

``--config`` and ``--log-format`` are accepted before or after the subcommand (``mailroom --config X
watch`` and ``mailroom watch --config X`` mean the same): every command and group made from ``cli`` gets
both options, and a value given later (nearer the command) wins.

One-shot commands log to stderr, so their stdout is only their output (one JSON document with
``--json``); the long-running services (watch, worker, webhooks) log to stdout, a service's log.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import structlog
from redis.exceptions import RedisError

from mailroom import logs, preflight
from mailroom.config import CONFIG_PATH_ENV, Settings, load_settings
from mailroom.errors import ConfigError

LOG_FORMATS = ("json", "console", "auto")


def load_or_exit(ctx: click.Context, service: bool = False, *, start: bool = False) -> Settings:
    """The settings, or each problem on its own line and exit code 2. Logs go to stderr, or to stdout
    for a ``service`` (a long-running process whose stdout is its log).

    ``start``: a process is starting (or check-config asks whether it could): also read every secret
    file and import every handler (mailroom.preflight), so a config that would fail every message
    stops here instead.
    """
    obj = ctx.find_root().obj
    warnings: list[str] = []  # logged once the log format is known: a JSON log stays all JSON
    try:
        settings = load_settings(obj["config"], warn=warnings.append)
        problems = preflight.problems(settings) if start else []
    except ConfigError as exc:
        problems = exc.problems
    if problems:
        for line in warnings:
            click.echo(line, err=True)
        for problem in problems:
            click.echo(f"config error: {problem}", err=True)
        if ctx.params.get("as_json"):  # a script reading stdout gets one JSON document, errors too
            click.echo(json.dumps({"error": "config error", "problems": problems}, ensure_ascii=False))
        ctx.exit(2)
    logs.configure(
        obj["log_format"] or settings.log_format, settings.log_level, None if service else sys.stderr
    )
    for line in warnings:
        structlog.get_logger("mailroom.config").warning(
            "config_warning", detail=line.removeprefix("config warning: ")
        )
    return settings


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Store a shared option where every command finds it; a value given nearer the command wins."""
    root = ctx.find_root()
    if root.obj is None:
        root.obj = {"config": None, "log_format": None}
    if value is not None and param.name is not None:
        root.obj[param.name] = value
    return value


def _shared_options(root: bool = False) -> list[click.Option]:
    where = "before or after the command" if root else "here or before the command"
    return [
        click.Option(
            ["--config"],
            type=click.Path(dir_okay=False, path_type=Path),
            envvar=CONFIG_PATH_ENV if root else None,  # only once: the root's value is the fallback
            expose_value=False,
            callback=_remember,
            help=f"YAML config file (or ${CONFIG_PATH_ENV}), {where}. MAILROOM_* variables override "
            "its fields.",
        ),
        click.Option(
            ["--log-format"],
            type=click.Choice(LOG_FORMATS),
            expose_value=False,
            callback=_remember,
            help=f"json, console or auto (default: from config), {where}.",
        ),
    ]


class MailroomCommand(click.Command):
    """A subcommand that also takes ``--config`` and ``--log-format`` after its name, and ends with one
    line and exit code 1 (not a traceback) when Redis fails under it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_shared_options())

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RedisError as exc:
            click.echo(f"error: Redis failed: {type(exc).__name__}: {exc}", err=True)
            ctx.exit(1)


class MailroomGroup(click.Group):
    """A group whose commands and subgroups take the shared options too (``mailroom failed list
    --config X``)."""

    command_class = MailroomCommand

    def __init__(self, *args: Any, root: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_shared_options(root))


MailroomGroup.group_class = MailroomGroup


@click.group(cls=MailroomGroup, root=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mailroom", prog_name="mailroom", message="%(prog)s %(version)s")
def cli() -> None:
    """mailroom turns incoming email into application work.

    It watches IMAP mailboxes (IDLE), finds the reply key each message was sent to, and queues one RQ job
    per message on Redis; workers hand each job to the application's handler.
    """
