"""The provider side's commands: webhooks, suppressions, domain check."""

from __future__ import annotations

import json
from typing import Any

import click

from mailroom.cli.base import cli, load_or_exit
from mailroom.cli.output import WIDTH, clean, cut


@cli.command()
@click.option("--host", default=None, help="address to listen on (default: provider.webhook_host)")
@click.option("--port", type=int, default=None, help="port to listen on (default: provider.webhook_port)")
@click.pass_context
def webhooks(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the provider's webhook (POST provider.webhook_path) with uvicorn.

    Only calls signed with the webhook signing key (provider.signing_key_file or
    MAILROOM_PROVIDER__SIGNING_KEY), recent and never seen before are processed; every other call gets
    404 with an empty body. A key file is followed: a rewritten (rotated) key takes effect within a
    second or so, without a restart. Prometheus metrics are served on provider.metrics_port when set.
    """
    from mailroom.app import run_webhooks

    settings = load_or_exit(ctx, service=True, start=True)
    provider = settings.provider
    key = provider.read_signing_key() if provider is not None else None
    if provider is None or not key:
        click.echo(
            "config error: provider.signing_key_file (or MAILROOM_PROVIDER__SIGNING_KEY) is required",
            err=True,
        )
        ctx.exit(2)
    run_webhooks(settings, provider, host, port)


@cli.group()
def suppressions() -> None:
    """The suppression list: addresses mailroom never sends mail to."""


def _list(ctx: click.Context) -> Any:
    from mailroom.provider.suppression import SuppressionList
    from mailroom.redis_client import connect

    return SuppressionList(connect(load_or_exit(ctx).redis_url))


def _address(value: str) -> str:
    from mailroom.provider.suppression import normalise

    try:
        return normalise(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@suppressions.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON array of records")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every suppressed address, sorted, with reason and time."""
    records = sorted(_list(ctx), key=lambda r: r.address)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    for r in records:  # tab-separated, one record a line, for cut and awk
        fields = (r.address, r.reason, r.code or "-", r.created_at, r.source)
        click.echo("\t".join(clean(field) for field in fields))
    click.echo(f"{len(records)} suppressed", err=True)


@suppressions.command()
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, address: str, as_json: bool) -> None:
    """One address's record (exit 1 if it is not suppressed)."""
    record = _list(ctx).get(_address(address))
    if record is None:
        if as_json:
            click.echo("null")
        else:
            click.echo(f"{_address(address)} is not suppressed", err=True)
        ctx.exit(1)
    if as_json:
        click.echo(json.dumps(record.as_dict(), indent=2))
        return
    for name, value in record.as_dict().items():
        click.echo(f"{name}: {clean(str(value)) if value is not None else '-'}")


@suppressions.command()
@click.argument("address")
@click.option("--reason", default="manual", show_default=True)
@click.option("--message", default=None, help="a note kept with the record")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def add(ctx: click.Context, address: str, reason: str, message: str | None, as_json: bool) -> None:
    """Suppress an address by hand."""
    record = _list(ctx).suppress(_address(address), reason, message=message, source="manual")
    click.echo(json.dumps(record.as_dict()) if as_json else f"suppressed {record.address}")


@suppressions.command()
@click.argument("address")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def remove(ctx: click.Context, address: str, as_json: bool) -> None:
    """Take an address off the list (exit 1 if it was not on it)."""
    name = _address(address)
    removed = _list(ctx).unsuppress(name)
    if as_json:
        click.echo(json.dumps({"address": name, "removed": removed}))
    else:
        click.echo(f"{'removed' if removed else 'not suppressed:'} {name}", err=not removed)
    if not removed:
        ctx.exit(1)


@cli.group()
def domain() -> None:
    """Check a sending domain's DNS records."""


@domain.command()
@click.argument("name")
@click.option("--tracking", is_flag=True, help="also check the click/open tracking CNAME")
@click.option("--json", "as_json", is_flag=True)
@click.option("--nameserver", default=None, help="ask this nameserver (default: domain_check.nameserver)")
@click.option("--port", type=int, default=None, help="the nameserver's port (default: 53)")
@click.pass_context
def check(
    ctx: click.Context, name: str, tracking: bool, as_json: bool, nameserver: str | None, port: int | None
) -> None:
    """Verify MX, SPF, DKIM (and with --tracking the CNAME) for NAME; exit 1 if any is not OK."""
    from mailroom.provider.domain import TRACKING_WARNING, DnsError, Status, check_domain

    settings = load_or_exit(ctx)
    try:
        checks = check_domain(
            name, settings.domain_check, tracking=tracking, nameserver=nameserver, port=port
        )
    except DnsError as exc:
        if as_json:
            click.echo(json.dumps({"domain": name, "ok": False, "error": f"DNS lookup failed: {exc}"}))
        else:
            click.echo(f"error: DNS lookup failed: {exc}", err=True)
        ctx.exit(2)
    warning = None
    tracked = [c for c in checks if c.record == "CNAME" and c.found]
    if tracked:
        warning = TRACKING_WARNING.format(host=tracked[0].name)
    ok = all(c.status is Status.OK for c in checks)
    if as_json:
        click.echo(
            json.dumps(
                {"domain": name, "ok": ok, "checks": [c.as_dict() for c in checks], "warning": warning}
            )
        )
    else:
        for c in checks:
            found = clean(", ".join(c.found)) if c.found else "-"
            line = f"{c.record:<6} {clean(c.name):<40} {c.status.value:<8} "
            click.echo(line + cut(found, max(WIDTH - len(line), 20)))
            if c.status is not Status.OK:
                click.echo(cut(f"       expected: {clean(c.expected)}", WIDTH))
        if warning:
            click.echo(warning, err=True)
    if not ok:
        ctx.exit(1)
