"""Operators' commands: failed list|show|export|purge, requeue, inject, history, check.

Thin shells over mailroom.failed, mailroom.history, mailroom.inject and mailroom.check: each parses its
options and calls the library. With --json, stdout is one JSON document (logs go to stderr), errors too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import redis
from redis.exceptions import RedisError

from mailroom import failed as failed_lib
from mailroom import history as history_lib
from mailroom.cli.base import cli, load_or_exit
from mailroom.cli.output import JsonArray, Table, clean, emit_json, printable, progress, when
from mailroom.config import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _connect(ctx: click.Context, settings: Settings) -> redis.Redis:
    from mailroom.redis_client import connect

    connection = connect(settings.redis_url)
    try:
        connection.ping()
    except RedisError as exc:
        _fail(ctx, f"Redis is not reachable: {type(exc).__name__}: {exc}", bool(ctx.params.get("as_json")))
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


def _bulk_options(func: F) -> F:
    """JOB_ID... or --all with the filters, and --limit: which failed messages a bulk command is for."""
    func = click.option("--limit", type=click.IntRange(min=1), help="at most this many")(func)
    func = _filter_options(func)
    func = click.option("--all", "all_", is_flag=True, help="every failed message matching the filters")(func)
    return click.argument("job_ids", nargs=-1)(func)


def _selection(
    job_ids: tuple[str, ...],
    all_: bool,
    limit: int | None,
    filters: failed_lib.Filters,
) -> failed_lib.Selection:
    if bool(job_ids) == all_:
        raise click.UsageError("give job ids, or --all (with optional filters), not both")
    if job_ids and filters != failed_lib.Filters():
        raise click.UsageError("the filters select with --all; named jobs are taken as they are")
    return failed_lib.Selection(job_ids=job_ids, filters=filters, limit=limit)


FAILED_HEADERS = ["JOB ID", "MAILBOX", "KEY", "FROM", "SUBJECT", "ERROR", "FAILED AT (UTC)", "ATTEMPTS"]
FAILED_FIXED = ("JOB ID", "FAILED AT (UTC)", "ATTEMPTS")


def _failed_row(i: failed_lib.FailedMessage) -> list[str | None]:
    return [
        i.job_id,
        i.mailbox,
        i.key,
        i.from_address,
        i.subject,
        i.error,
        when(i.failed_at),
        str(i.attempts),
    ]


def _print_failed(items: Iterable[failed_lib.FailedMessage], as_json: bool) -> int:
    """Streams the listing; returns how many were printed."""
    if as_json:
        array = JsonArray()
        for item in items:
            array.add(item.summary())
        array.close()
        return array.count
    table = Table(FAILED_HEADERS, FAILED_FIXED)
    for item in items:
        table.add(_failed_row(item))
    table.close()
    return table.rows


@cli.group()
def failed() -> None:
    """Failed messages (RQ's failed registries): list, show, export, purge (and `mailroom requeue`)."""


@failed.command("list")
@_filter_options
@click.option("--limit", type=click.IntRange(min=1), help="at most this many")
@click.option("--json", "as_json", is_flag=True, help="one JSON array, for scripts")
@click.pass_context
def failed_list(
    ctx: click.Context,
    queue: str | None,
    mailbox: str | None,
    since: str | None,
    error_text: str | None,
    key: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List failed messages, oldest first: job id, mailbox, key, from, subject, error, time, attempts.

    Streams (a page of the registry at a time, never a message's body), so memory stays flat however
    many have failed."""
    settings = load_or_exit(ctx)
    connection = _connect(ctx, settings)
    queues = failed_lib.queue_names(connection, settings.queues())
    filters = _filters(queue, mailbox, since, error_text, key)
    shown = _print_failed(failed_lib.iter_failed(connection, queues, filters, limit), as_json)
    if not as_json:
        click.echo(f"{shown} failed message(s)")


@failed.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for scripts")
@click.pass_context
def failed_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """A failed message's metadata and traceback (never its body). Exit 1 if it is not failed."""
    settings = load_or_exit(ctx)
    try:
        shown = failed_lib.show(_connect(ctx, settings), job_id)
    except failed_lib.NotFailed as exc:
        _fail(ctx, str(exc), as_json, job_id=job_id)
    data = shown.as_dict()
    if as_json:
        emit_json(data)
        return
    for name, value in data.items():
        if name not in ("payload", "traceback"):
            click.echo(f"{name}: {clean(str(value)) if value is not None else '-'}")
    if shown.payload is not None:
        p = shown.payload
        click.echo(f"to key header: {p.key_header}  size: {p.size}  received: {p.received_at}")
        click.echo(f"flags: auto_reply={p.auto_reply} bounce={p.bounce} parse_error={clean(p.parse_error)}")
    click.echo("traceback:")
    click.echo(printable(shown.item.traceback.rstrip()) or "(none recorded)")


def _fail(ctx: click.Context, message: str, as_json: bool, **fields: Any) -> NoReturn:
    """An error as JSON on stdout with --json (a script reads one document), else on stderr; exit 1."""
    if as_json:
        emit_json({**fields, "error": message})
    else:
        click.echo(f"error: {message}", err=True)
    ctx.exit(1)


@failed.command("export")
@_bulk_options
@click.option(
    "--output",
    "-o",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="write each message to DIR/<job id>.eml",
)
@click.option(
    "--mbox", type=click.Path(dir_okay=False, path_type=Path), help="append the messages to this mbox"
)
@click.option("--json", "as_json", is_flag=True, help="one JSON array of outcomes (with --output or --mbox)")
@click.pass_context
def failed_export(
    ctx: click.Context,
    job_ids: tuple[str, ...],
    all_: bool,
    queue: str | None,
    mailbox: str | None,
    since: str | None,
    error_text: str | None,
    key: str | None,
    limit: int | None,
    directory: Path | None,
    mbox: Path | None,
    as_json: bool,
) -> None:
    """The failed messages' raw bytes, exactly as the IMAP server held them: one JOB_ID to stdout, or
    JOB_ID... / --all [filters] into a directory (--output DIR) or an mbox (--mbox FILE).

    Exit 1 if a named job is not failed or carries no message."""
    selection = _selection(job_ids, all_, limit, _filters(queue, mailbox, since, error_text, key))
    if directory is not None and mbox is not None:
        raise click.UsageError("--output or --mbox, not both")
    to_stdout = directory is None and mbox is None
    if to_stdout and (all_ or len(job_ids) > 1):
        raise click.UsageError("several messages go to a directory (--output DIR) or an mbox (--mbox FILE)")
    if to_stdout and as_json:
        raise click.UsageError("--json reports where messages went: use it with --output or --mbox")
    settings = load_or_exit(ctx)
    connection = _connect(ctx, settings)
    if to_stdout:
        try:
            raw = failed_lib.raw_message(connection, job_ids[0])
        except failed_lib.NotFailed as exc:
            _fail(ctx, str(exc), as_json=False)
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return
    queues = failed_lib.queue_names(connection, settings.queues())
    length = len(job_ids) if job_ids else failed_lib.count(connection, queues)
    outcomes = failed_lib.export_selected(connection, queues, selection, directory=directory, mbox=mbox)
    _report(ctx, outcomes, min(length, limit or length), "exported", "exporting", as_json, dry_run=False)


def _report(
    ctx: click.Context,
    outcomes: Iterator[failed_lib.Outcome],
    length: int,
    verb: str,
    label: str,
    as_json: bool,
    dry_run: bool,
) -> None:
    """Print a bulk action's outcomes (a JSON array, or a line per skipped job and a total); exit 1 if a
    job named on the command line was not failed, in a dry run exactly as in the real one."""
    out = JsonArray() if as_json else None
    done = skipped = 0
    with progress(outcomes, length, label) as items:
        for outcome in items:
            if out is not None:
                out.add(outcome.as_dict())
            if outcome.done:
                done += 1
            else:
                skipped += 1
                if out is None:
                    click.echo(f"skip: {clean(outcome.reason)}", err=True)
    if out is not None:
        out.close()
    else:
        note = f", {skipped} not failed (skipped)" if skipped else ""
        said = f"dry run: {done} message(s) would be {verb}" if dry_run else f"{verb} {done} message(s)"
        click.echo(said + note)
    ctx.exit(1 if skipped and ctx.params.get("job_ids") else 0)


@failed.command("purge")
@_bulk_options
@click.option("--dry-run", is_flag=True, help="say what would be deleted, delete nothing")
@click.option("--json", "as_json", is_flag=True, help="one JSON array of outcomes, for scripts")
@click.pass_context
def failed_purge(
    ctx: click.Context,
    job_ids: tuple[str, ...],
    all_: bool,
    queue: str | None,
    mailbox: str | None,
    since: str | None,
    error_text: str | None,
    key: str | None,
    limit: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete failed messages for good (job, data, results): JOB_ID..., or --all [filters].

    Export them first if they may be wanted (mailroom failed export --all --mbox FILE). Exit 1 if a named
    job is not failed, with --dry-run too."""
    selection = _selection(job_ids, all_, limit, _filters(queue, mailbox, since, error_text, key))
    settings = load_or_exit(ctx)
    connection = _connect(ctx, settings)
    queues = failed_lib.queue_names(connection, settings.queues())
    length = len(job_ids) if job_ids else failed_lib.count(connection, queues)
    outcomes = failed_lib.purge_selected(connection, queues, selection, dry_run=dry_run)
    _report(ctx, outcomes, min(length, limit or length), "purged", "purging", as_json, dry_run)


@cli.command()
@_bulk_options
@click.option("--dry-run", is_flag=True, help="say what would be requeued, move nothing")
@click.option("--json", "as_json", is_flag=True, help="one JSON array of outcomes, for scripts")
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
    limit: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Move failed messages back to their own queue, data untouched: by JOB_ID..., or --all [filters].

    Safe to run twice and while workers run: a job that is no longer failed is reported and skipped.
    Streams, so --all takes flat memory however many have failed. Exit 1 if a named job could not be
    requeued (with --dry-run too: it would not be)."""
    selection = _selection(job_ids, all_, limit, _filters(queue, mailbox, since, error_text, key))
    settings = load_or_exit(ctx)
    connection = _connect(ctx, settings)
    queues = failed_lib.queue_names(connection, settings.queues())
    length = len(job_ids) if job_ids else failed_lib.count(connection, queues)
    outcomes = failed_lib.requeue_selected(connection, queues, selection, dry_run=dry_run)
    _report(ctx, outcomes, min(length, limit or length), "requeued", "requeueing", as_json, dry_run)


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("--mailbox", help="the configured mailbox they are for (default: the first)")
@click.option("--force", is_flag=True, help="queue them even if these exact messages were injected before")
@click.option("--json", "as_json", is_flag=True, help="one JSON array, a result per message")
@click.pass_context
def inject(
    ctx: click.Context, sources: tuple[str, ...], mailbox: str | None, force: bool, as_json: bool
) -> None:
    """Enqueue raw messages exactly as the watcher would: .eml files, directories of them, mbox files,
    or - for stdin.

    Idempotent: a job id comes from the message's SHA-256, so the same bytes injected twice into a
    mailbox make one job (the second run says "already queued"); --force queues them again.
    Exit 1 if any source could not be read."""
    from mailroom.inject import inject_many
    from mailroom.mailfiles import MailFileError, refs
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
        found = refs(sources)
    except MailFileError as exc:
        _fail(ctx, str(exc), as_json)
    queue = MailQueue(_connect(ctx, settings), settings)
    out = JsonArray() if as_json else None
    errors = 0
    with progress(inject_many(queue, target, found, force=force), len(found), "injecting") as results:
        for result in results:
            errors += result.error is not None
            if out is not None:
                out.add(result.as_dict())
            elif result.error:
                click.echo(f"error: {result.error}", err=True)
            else:
                state = "queued" if result.new else "already queued (same bytes before; --force to repeat)"
                click.echo(
                    f"{state}: job {result.job_id} mailbox={result.mailbox} queue={result.queue} "
                    f"key={clean(result.key) or '-'}"
                )
    if out is not None:
        out.close()
    ctx.exit(1 if errors else 0)


@cli.command()
@click.option("--from", "from_address", help="sender address (substring, any case)")
@click.option("--key", help="reply key")
@click.option("--message-id", help="Message-ID, with or without <>")
@click.option("--mailbox")
@click.option("--status", type=click.Choice([s.value for s in history_lib.Status]))
@click.option("--since", default="7d", show_default=True, help="a duration (2h, 1d) or an ISO time")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True, help="at most this many")
@click.option("--json", "as_json", is_flag=True, help="one JSON array, for scripts")
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
        emit_json([e.as_dict() for e in entries])
        return
    table = Table(
        ["QUEUED AT (UTC)", "STATUS", "MAILBOX", "KEY", "FROM", "SUBJECT", "JOB ID", "ERROR"],
        fixed=("QUEUED AT (UTC)", "STATUS", "JOB ID"),
    )
    for e in entries:
        status = e.status + (" (auto-reply)" if e.auto_reply else "")
        table.add([when(e.queued_at), status, e.mailbox, e.key, e.from_address, e.subject, e.job_id, e.error])
    table.close()
    click.echo(f"{len(entries)} message(s)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON array of results, for scripts")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Is it working? Config, each mailbox (IMAP: TCP, TLS, login, folder, IDLE, waiting; Graph: token,
    folder, waiting), Redis, workers, failed jobs: one ✓/✗ line each. Exit 1 if anything failed
    (warnings, marked !, do not count). Logs go to stderr, so stdout is only the report."""
    from mailroom.check import Outcome, run_checks
    from mailroom.redis_client import connect

    settings = load_or_exit(ctx)
    results = []
    for result in run_checks(settings, connect(settings.redis_url)):
        results.append(result)
        if not as_json:
            click.echo(clean(result.line()))
    if as_json:
        emit_json([r.as_dict() for r in results])
    ctx.exit(1 if any(r.outcome is Outcome.FAIL for r in results) else 0)
