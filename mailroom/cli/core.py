"""The pipeline's commands: watch, worker, parse, check-config."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from mailroom.cli.base import cli, load_or_exit
from mailroom.config import DEFAULT_ADDRESS, INCOMING_ADDRESS_ENV, Settings, masked


@cli.command("check-config")
@click.option("--json", "as_json", is_flag=True, help="the masked config as one JSON document")
@click.pass_context
def check_config(ctx: click.Context, as_json: bool) -> None:
    """Validate the configuration and print it with secrets masked (exit 2 if invalid).

    Also what every process checks at start: each secret file is read, the webhook secret decoded and
    each module:callable handler imported."""
    settings = load_or_exit(ctx, start=True)
    if as_json:
        click.echo(json.dumps(masked(settings), ensure_ascii=False, indent=2))
        return
    click.echo(yaml.safe_dump(masked(settings), sort_keys=False), nl=False)


@cli.command()
@click.pass_context
def watch(ctx: click.Context) -> None:
    """Watch every configured mailbox and enqueue each new message (until SIGTERM or Ctrl-C)."""
    from mailroom.app import run_watch

    settings = load_or_exit(ctx, service=True, start=True)
    if not settings.mailboxes:
        click.echo("config error: mailboxes: configure at least one mailbox to watch", err=True)
        ctx.exit(2)
    _refuse_unsafe_redis(ctx, settings)
    ctx.exit(run_watch(settings))


def _refuse_unsafe_redis(ctx: click.Context, settings: Settings) -> None:
    """An evicting Redis loses or doubles mail the watcher has already marked done: exit 2, one line."""
    from mailroom.redis_client import connect
    from mailroom.redis_safety import refusal_at_start

    connection = connect(settings.redis_url)
    try:
        refusal = refusal_at_start(connection, settings)
    finally:
        connection.close()
    if refusal is not None:
        click.echo(f"redis error: {refusal}", err=True)
        ctx.exit(2)


@cli.command()
@click.option(
    "--queue", "-q", "queues", multiple=True, help="queue to work on (repeatable); default: all configured"
)
@click.option("--burst", is_flag=True, help="work until the queues are empty, then exit")
@click.option(
    "--isolation",
    type=click.Choice(["thread", "fork"]),
    help="thread: jobs run concurrently in this process; fork: a work-horse process per job"
    " (default: worker.isolation)",
)
@click.option(
    "--concurrency", "-c", type=click.IntRange(1, 1000), help="jobs at once (default: worker.concurrency)"
)
@click.pass_context
def worker(
    ctx: click.Context, queues: tuple[str, ...], burst: bool, isolation: str | None, concurrency: int | None
) -> None:
    """Run an RQ worker (JSON serializer, with the scheduler for retries) on the mailboxes' queues."""
    from mailroom.worker import run_worker

    settings = load_or_exit(ctx, service=True, start=True)
    overrides = {k: v for k, v in (("isolation", isolation), ("concurrency", concurrency)) if v is not None}
    if overrides:
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(update=overrides)})
    ctx.exit(run_worker(settings, queues, burst))


@cli.command()
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--address",
    envvar=INCOMING_ADDRESS_ENV,
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
