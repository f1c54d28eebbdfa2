"""The CLI's shared options: --config and --log-format before or after the command, or $MAILROOM_CONFIG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mailroom.cli import cli


def config(path: Path, redis_url: str) -> Path:
    path.write_text(yaml.safe_dump({"redis_url": redis_url, "mailboxes": []}))
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "{a}", "check-config"],
        ["check-config", "--config", "{a}"],
        ["--config", "{b}", "check-config", "--config", "{a}"],  # nearer the command wins
    ],
)
def test_config_before_or_after_the_command(tmp_path, monkeypatch, args):
    monkeypatch.delenv("MAILROOM_CONFIG", raising=False)
    a = config(tmp_path / "a.yml", "redis://127.0.0.1:7001/0")
    b = config(tmp_path / "b.yml", "redis://127.0.0.1:7002/0")
    result = CliRunner().invoke(cli, [arg.format(a=a, b=b) for arg in args])
    assert result.exit_code == 0, result.output
    assert "7001" in result.output and "7002" not in result.output


def test_config_from_the_environment_and_the_flag_wins(tmp_path, monkeypatch):
    a = config(tmp_path / "a.yml", "redis://127.0.0.1:7001/0")
    b = config(tmp_path / "b.yml", "redis://127.0.0.1:7002/0")
    monkeypatch.setenv("MAILROOM_CONFIG", str(a))
    assert "7001" in CliRunner().invoke(cli, ["check-config"]).output
    assert "7002" in CliRunner().invoke(cli, ["check-config", "--config", str(b)]).output
    assert "7002" in CliRunner().invoke(cli, ["--config", str(b), "check-config"]).output


def test_nested_commands_and_services_take_the_options_after_their_name(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILROOM_CONFIG", raising=False)
    a = config(tmp_path / "a.yml", "redis://127.0.0.1:7001/0")
    watched = CliRunner().invoke(cli, ["watch", "--config", str(a), "--log-format", "json"])
    assert watched.exit_code == 2 and "configure at least one mailbox" in watched.output
    missing = CliRunner().invoke(cli, ["failed", "list", "--config", str(tmp_path / "none.yml")])
    assert missing.exit_code == 2 and "none.yml" in missing.output
    grouped = CliRunner().invoke(cli, ["failed", "--config", str(tmp_path / "none.yml"), "list"])
    assert grouped.exit_code == 2 and "none.yml" in grouped.output


@pytest.mark.parametrize(
    "args", [["failed", "list"], ["history"], ["requeue", "--all"], ["failed", "show", "x"]]
)
def test_with_json_an_unreachable_redis_is_a_json_error_too(tmp_path, monkeypatch, args):
    monkeypatch.delenv("MAILROOM_CONFIG", raising=False)
    a = config(tmp_path / "a.yml", "redis://127.0.0.1:9/0")  # nothing listens on port 9
    result = CliRunner().invoke(cli, [*args, "--json", "--config", str(a)])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"].startswith("Redis is not reachable")


def test_redis_failing_mid_listing_is_one_line_and_exit_1(tmp_path, monkeypatch):
    import redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    import mailroom.failed

    def broken(*args, **kwargs):
        raise RedisConnectionError("Connection closed by server.")
        yield  # a generator, as the real one

    monkeypatch.delenv("MAILROOM_CONFIG", raising=False)
    monkeypatch.setattr(redis.Redis, "ping", lambda self: True)
    monkeypatch.setattr(mailroom.failed, "queue_names", lambda connection, configured: ["q"])
    monkeypatch.setattr(mailroom.failed, "iter_failed", broken)
    a = config(tmp_path / "a.yml", "redis://127.0.0.1:9/0")
    result = CliRunner().invoke(cli, ["failed", "list", "--config", str(a)])
    assert result.exit_code == 1 and not isinstance(result.exception, RedisConnectionError)
    assert "error: Redis failed: ConnectionError: Connection closed by server." in result.stderr
