"""``mailroom import``: a thin shell over mailroom.migrate."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mailroom.cli.base import cli
from mailroom.migrate import ImportRefused, Options, import_file, render


@cli.command("import")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--from",
    "source_format",
    type=click.Choice(["auto", "mail_room", "gitlab", "helm"]),
    default="auto",
    show_default=True,
    help="what SOURCE is: a mail_room.yml, GitLab's gitlab.yml, or the GitLab Helm chart's values",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="default: stdout")
@click.option("--force", is_flag=True, help="overwrite --output if it exists")
@click.option(
    "--secrets-dir",
    default="/run/secrets/mailroom",
    show_default=True,
    help="where the secret files for inline passwords and tokens are expected (the import never writes them)",
)
@click.option("--address", help="reply-address template for every mailbox, e.g. incoming+%{key}@example.com")
@click.option(
    "--gitlab-url", help="GitLab's internal URL, for sidekiq delivery or a Helm release's Workhorse"
)
@click.option("--redis-url", help="the Redis mailroom queues to (default: mail_room's arbitration Redis)")
@click.option("--rails-env", default="production", show_default=True, help="gitlab.yml's environment")
@click.option(
    "--env",
    "use_env",
    is_flag=True,
    help="write ERB ENV['X'] in non-secret options with X's value in this shell",
)
@click.pass_context
def import_command(
    ctx: click.Context,
    source: Path,
    source_format: str,
    output: Path | None,
    force: bool,
    secrets_dir: str,
    address: str | None,
    gitlab_url: str | None,
    redis_url: str | None,
    rails_env: str,
    use_env: bool,
) -> None:
    """Write a mailroom config from a mail_room, gitlab.yml or Helm config.

    Every option that does not carry over as it was is listed on stderr (action: do this before
    starting; changed: works differently; dropped: not carried over). Secrets stay in files: an inline
    password becomes a password_file to create. Exit 2, writing nothing, if something cannot be mapped.
    """
    options = Options(
        secrets_dir=secrets_dir,
        address=address,
        gitlab_url=gitlab_url,
        redis_url=redis_url,
        environ=dict(os.environ) if use_env else None,
    )
    try:
        result = import_file(source, options, source_format, rails_env)  # type: ignore[arg-type]
    except ImportRefused as exc:
        for problem in exc.problems:
            click.echo(f"import error: {problem}", err=True)
        ctx.exit(2)
    text = render(result, str(source))
    if output is None:
        click.echo(text, nl=False)
    else:
        if output.exists() and not force:
            click.echo(f"import error: {output} exists (--force to overwrite)", err=True)
            ctx.exit(2)
        output.write_text(text, encoding="utf-8")
    for note in result.notes:
        click.echo(note.as_line(), err=True)
    actions = len(result.actions())
    click.echo(
        f"imported {len(result.config['mailboxes'])} mailbox(es) from {result.source_format}"
        + (f"; {actions} action(s) before starting" if actions else ""),
        err=True,
    )
