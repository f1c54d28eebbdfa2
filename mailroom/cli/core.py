"""The ``mailroom`` command: a thin shell over the library, so whatever it does a program can do."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click
import yaml

from mailroom import logs
from mailroom.config import CONFIG_PATH_ENV, DEFAULT_ADDRESS, Settings, load_settings, masked
from mailroom.errors import ConfigError

SHUTDOWN_GRACE_SECONDS = 8.0


def _load(ctx: click.Context) -> Settings:
    """The settings, or each problem on its own line and exit code 2."""
    try:
        settings = load_settings(ctx.obj["config"])
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"config error: {problem}", err=True)
        ctx.exit(2)
    logs.configure(ctx.obj["log_format"] or settings.log_format, settings.log_level)
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


@cli.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration and print it with secrets masked (exit 2 if invalid)."""
    settings = _load(ctx)
    click.echo(yaml.safe_dump(masked(settings), sort_keys=False), nl=False)


@cli.command()
@click.pass_context
def watch(ctx: click.Context) -> None:
    """Watch every configured mailbox and enqueue each new message (until SIGTERM or Ctrl-C)."""
    from mailroom.app import start_watchers

    settings = _load(ctx)
    if not settings.mailboxes:
        click.echo("config error: mailboxes: configure at least one mailbox to watch", err=True)
        ctx.exit(2)
    stop = threading.Event()
    _stop_on_signals(stop)
    watchers = start_watchers(settings, stop)
    stop.wait()
    clean = watchers.join(SHUTDOWN_GRACE_SECONDS)
    ctx.exit(0 if clean else 1)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@cli.command()
@click.option(
    "--queue", "-q", "queues", multiple=True, help="queue to work on (repeatable); default: all configured"
)
@click.option("--burst", is_flag=True, help="work until the queues are empty, then exit")
@click.pass_context
def worker(ctx: click.Context, queues: tuple[str, ...], burst: bool) -> None:
    """Run an RQ worker (JSON serializer, with the scheduler for retries) on the mailboxes' queues."""
    from rq import Queue, Worker
    from rq.serializers import JSONSerializer

    from mailroom.queue import connect

    settings = _load(ctx)
    if ctx.obj["config"]:
        # The job function reads the configuration in the worker process.
        os.environ[CONFIG_PATH_ENV] = str(ctx.obj["config"])
    connection = connect(settings.redis_url)
    names = list(queues) or settings.queues()
    rq_queues = [Queue(name, connection=connection, serializer=JSONSerializer) for name in names]
    rq_worker = Worker(rq_queues, connection=connection, serializer=JSONSerializer)
    rq_worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level.upper())


@cli.command()
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--address",
    envvar="MAILROOM_INCOMING_ADDRESS",
    default=DEFAULT_ADDRESS,
    show_default=True,
    help="the address template the reply key is found in (or $MAILROOM_INCOMING_ADDRESS)",
)
def parse(source: str, address: str) -> None:
    """Parse one message (a file, or - for stdin) and print what mailroom sees in it, as JSON."""
    from mailroom.keys import AddressTemplate
    from mailroom.message import parse_message

    try:
        template = AddressTemplate.parse(address)
    except ValueError as exc:
        raise click.UsageError(f"--address: {exc}") from None
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        click.echo(f"error: cannot read {source}: {exc.strerror or exc}", err=True)
        sys.exit(1)
    result: dict[str, Any] = parse_message(raw, template).as_dict()
    click.echo(json.dumps(result, ensure_ascii=False, indent=2))


def main() -> None:
    cli(prog_name="mailroom")


if __name__ == "__main__":
    main()
