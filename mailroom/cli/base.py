"""The ``mailroom`` command group and what every subcommand shares (loading the config or exiting 2)."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import click

from mailroom import logs
from mailroom.config import CONFIG_PATH_ENV, Settings, load_settings
from mailroom.errors import ConfigError


def load_or_exit(ctx: click.Context, log_stream: TextIO | None = None) -> Settings:
    """The settings, or each problem on its own line and exit code 2. Logs go to stdout, or to
    ``log_stream`` for a command whose stdout is its output."""
    try:
        settings = load_settings(ctx.obj["config"])
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"config error: {problem}", err=True)
        ctx.exit(2)
    logs.configure(ctx.obj["log_format"] or settings.log_format, settings.log_level, log_stream)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_PATH_ENV,
    help="YAML config file (or $MAILROOM_CONFIG). MAILROOM_* variables override its fields.",
)
@click.option(
    "--log-format", type=click.Choice(["json", "console", "auto"]), default=None, help="default: from config"
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None, log_format: str | None) -> None:
    """mailroom turns incoming email into application work.

    It watches IMAP mailboxes (IDLE), finds the reply key each message was sent to, and queues one RQ job
    per message on Redis; workers hand each job to the application's handler.
    """
    ctx.obj = {"config": config, "log_format": log_format}
