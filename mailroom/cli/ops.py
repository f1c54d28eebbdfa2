"""Operators' commands: failed list|show|export, requeue, inject, history, check.

Thin shells over mailroom.failed, mailroom.history, mailroom.inject and mailroom.check.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import redis
from redis.exceptions import RedisError

from mailroom import failed as failed_lib
from mailroom import history as history_lib
from mailroom.cli.base import cli, load_or_exit
from mailroom.config import Settings

F = TypeVar("F", bound=Callable[..., Any])
PROGRESS_AFTER = 20  # a progress bar for more jobs than this


def _connect(ctx: click.Context, settings: Settings) -> redis.Redis:
    from mailroom.queue import connect

    connection = connect(settings.redis_url)
    try:
        connection.ping()
    except RedisError as exc:
        click.echo(f"error: Redis is not reachable: {type(exc).__name__}: {exc}", err=True)
        ctx.exit(1)
    return connection


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return failed_lib.parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _filter_options(func: F) -> F:
    for option in reversed(
        [
            click.option("--queue", help="only this queue"),
            click.option("--mailbox", help="only this mailbox"),
            click.option("--since", help="failed since: a duration (2h, 30m, 7d) or an ISO 8601 time"),
            click.option("--error", "error_text", help="only failures whose traceback contains TEXT"),
            click.option("--key", help="only messages with this reply key"),
        ]
    ):
        func = option(func)
    return func


def _filters(
    queue: str | None, mailbox: str | None, since: str | None, error_text: str | None, key: str | None
) -> failed_lib.Filters:
    return failed_lib.Filters(queue=queue, mailbox=mailbox, since=_since(since), error=error_text, key=key)


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _cut(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _print_failed(items: Sequence[failed_lib.FailedMessage], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([i.summary() for i in items], ensure_ascii=False, indent=2))
        return
    rows = [
        [
            i.job_id,
            i.mailbox or "-",
            i.payload.key or "-" if i.payload else "-",
            _cut(i.payload.from_address if i.payload else None, 30) or "-",
            _cut(i.payload.subject if i.payload else None, 40) or "-",
            _cut(i.error, 60),
            _when(i.failed_at),
            str(i.attempts),
        ]
        for i in items
    ]
    headers = ["JOB ID", "MAILBOX", "KEY", "FROM", "SUBJECT", "ERROR", "FAILED AT (UTC)", "ATTEMPTS"]
    click.echo(_table(rows, headers))
    click.echo(f"{len(items)} failed message(s)")


@cli.group()
def failed() -> None:
    """Failed messages (RQ's failed registries): list, show, export."""


@failed.command("list")
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts")
@click.pass_context
def failed_list(
    ctx: click.Context,
    queue: str | None,
    mailbox: str | None,
    since: str | None,
    error_text: str | None,
    key: str | None,
    as_json: bool,
) -> None:
    """List failed messages, oldest first: job id, mailbox, key, from, subject, error, time, attempts."""
    settings = load_or_exit(ctx)
    connection = _connect(ctx, settings)
    queues = failed_lib.queue_names(connection, settings.queues())
    items = failed_lib.list_failed(connection, queues, _filters(queue, mailbox, since, error_text, key))
    _print_failed(items, as_json)


@failed.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def failed_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """A failed message's metadata and traceback (never its body)."""
    settings = load_or_exit(ctx)
    item = _get(ctx, _connect(ctx, settings), job_id)
    data = item.summary()
    if item.payload is not None:
        data["payload"] = item.payload.summary()
    data["enqueued_at"] = item.enqueued_at.isoformat() if item.enqueued_at else None
    if as_json:
        click.echo(json.dumps({**data, "traceback": item.traceback}, ensure_ascii=False, indent=2))
        return
    for name, value in data.items():
        if name != "payload":
            click.echo(f"{name}: {value}")
    if item.payload is not None:
        p = item.payload
        click.echo(f"to key header: {p.key_header}  size: {p.size}  received: {p.received_at}")
        click.echo(f"flags: auto_reply={p.auto_reply} bounce={p.bounce} parse_error={p.parse_error}")
    click.echo("traceback:")
    click.echo(item.traceback.rstrip() or "(none recorded)")


@failed.command("export")
@click.argument("job_id")
@click.pass_context
def failed_export(ctx: click.Context, job_id: str) -> None:
    """Write the failed message's raw bytes to stdout, exactly as the IMAP server held them."""
    settings = load_or_exit(ctx)
    item = _get(ctx, _connect(ctx, settings), job_id)
    try:
        raw = failed_lib.raw_message(item)
    except failed_lib.NotFailed as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    sys.stdout.buffer.write(raw)
    sys.stdout.buffer.flush()


def _get(ctx: click.Context, connection: redis.Redis, job_id: str) -> failed_lib.FailedMessage:
    try:
        return failed_lib.get_failed(connection, job_id)
    except failed_lib.NotFailed as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)


@cli.command()
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="every failed message matching the filters")
@_filter_options
@click.option("--dry-run", is_flag=True, help="list what would be requeued, move nothing")
@click.pass_context
def requeue(
    ctx: click.Context,
    job_ids: tuple[str, ...],
    all_: bool,
    queue: str | None,
    mailbox: str | None,
    since: str | None,
    error_text: str | None,
    key: str | None,
    dry_run: bool,
) -> None:
    """Move failed messages back to their own queue, data untouched: by JOB_ID..., or --all [filters].

    Safe to run twice and while workers run: a job that is no longer failed is reported and skipped.
    Exit 1 if any named job could not be requeued.
    """
    if bool(job_ids) == all_:
        raise click.UsageError("give job ids, or --all (with optional filters), not both")
    settings = load_or_exit(ctx)
    connection = _connect(ctx, settings)
    filters = _filters(queue, mailbox, since, error_text, key)
    if all_:
        queues = failed_lib.queue_names(connection, settings.queues())
        ids = [i.job_id for i in failed_lib.list_failed(connection, queues, filters)]
    else:
        ids = list(job_ids)
    if dry_run:
        items = []
        for job_id in ids:
            try:
                items.append(failed_lib.get_failed(connection, job_id))
            except failed_lib.NotFailed as exc:
                click.echo(f"skip: {exc}", err=True)
        _print_failed(items, as_json=False)
        click.echo(f"dry run: {len(items)} message(s) would be requeued")
        return
    moved, missing = _requeue_all(connection, ids)
    click.echo(f"requeued {moved} message(s)" + (f", {len(missing)} not failed (skipped)" if missing else ""))
    if missing and not all_:
        ctx.exit(1)


def _requeue_all(connection: redis.Redis, ids: Sequence[str]) -> tuple[int, list[str]]:
    moved, missing = 0, []

    def one(job_id: str) -> None:
        nonlocal moved
        try:
            failed_lib.requeue(connection, job_id)
            moved += 1
        except failed_lib.NotFailed as exc:
            missing.append(job_id)
            click.echo(f"skip: {exc}", err=True)

    if len(ids) > PROGRESS_AFTER:
        with click.progressbar(ids, label="requeueing", file=sys.stderr) as bar:
            for job_id in bar:
                one(job_id)
    else:
        for job_id in ids:
            one(job_id)
    return moved, missing


@cli.command()
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--mailbox", help="the configured mailbox it is for (default: the first)")
@click.option("--force", is_flag=True, help="queue it even if this exact message was injected before")
@click.pass_context
def inject(ctx: click.Context, source: str, mailbox: str | None, force: bool) -> None:
    """Enqueue a raw message (a .eml file, or - for stdin) exactly as the watcher would.

    Idempotent: the job id comes from the message's SHA-256, so the same bytes injected twice into a
    mailbox make one job (the second run says "already queued"); --force queues it again.
    """
    from mailroom.inject import inject as inject_message
    from mailroom.queue import MailQueue

    settings = load_or_exit(ctx)
    if not settings.mailboxes:
        click.echo("config error: mailboxes: configure at least one mailbox", err=True)
        ctx.exit(2)
    try:
        target = settings.mailbox(mailbox) if mailbox else settings.mailboxes[0]
    except KeyError:
        raise click.BadParameter(f"no mailbox named {mailbox!r}", param_hint="--mailbox") from None
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        click.echo(f"error: cannot read {source}: {exc.strerror or exc}", err=True)
        ctx.exit(1)
    if not raw:
        click.echo(f"error: {source} is empty", err=True)
        ctx.exit(1)
    result = inject_message(MailQueue(_connect(ctx, settings), settings), target, raw, force=force)
    state = "queued" if result.new else "already queued (same bytes injected before; --force to repeat)"
    key = result.payload.key or "-"
    click.echo(f"{state}: job {result.job_id} mailbox={target.name} queue={target.queue} key={key}")


@cli.command()
@click.option("--from", "from_address", help="sender address (substring, any case)")
@click.option("--key", help="reply key")
@click.option("--message-id", help="Message-ID, with or without <>")
@click.option("--mailbox")
@click.option("--status", type=click.Choice([s.value for s in history_lib.Status]))
@click.option("--since", default="7d", show_default=True, help="a duration (2h, 1d) or an ISO time")
@click.option("--limit", default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def history(
    ctx: click.Context,
    from_address: str | None,
    key: str | None,
    message_id: str | None,
    mailbox: str | None,
    status: str | None,
    since: str,
    limit: int,
    as_json: bool,
) -> None:
    """Recent messages and what happened to them (queued, handled, failed, requeued), newest first."""
    settings = load_or_exit(ctx)
    connection = _connect(ctx, settings)
    query = history_lib.Query(
        since=_since(since),
        from_address=from_address,
        key=key,
        message_id=message_id,
        mailbox=mailbox,
        status=status,
        limit=limit,
    )
    entries = history_lib.search(connection, query)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], ensure_ascii=False, indent=2))
        return
    rows = [
        [
            _when(e.queued_at),
            e.status + (" (auto-reply)" if e.auto_reply else ""),
            e.mailbox,
            e.key or "-",
            _cut(e.from_address, 30) or "-",
            _cut(e.subject, 40) or "-",
            e.job_id,
            _cut(e.error, 50),
        ]
        for e in entries
    ]
    headers = ["QUEUED AT (UTC)", "STATUS", "MAILBOX", "KEY", "FROM", "SUBJECT", "JOB ID", "ERROR"]
    click.echo(_table(rows, headers))
    click.echo(f"{len(entries)} message(s)")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Is it working? Config, each mailbox (IMAP: TCP, TLS, login, folder, IDLE, waiting; Graph: token,
    folder, waiting), Redis, workers, failed jobs: one ✓/✗ line each. Exit 1 if anything failed
    (warnings, marked !, do not count). Logs go to stderr, so stdout is only the report."""
    from mailroom.check import Outcome, run_checks
    from mailroom.queue import connect

    settings = load_or_exit(ctx)
    results = []
    for result in run_checks(settings, connect(settings.redis_url)):
        results.append(result)
        if not as_json:
            click.echo(result.line())
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], ensure_ascii=False, indent=2))
    ctx.exit(1 if any(r.outcome is Outcome.FAIL for r in results) else 0)
