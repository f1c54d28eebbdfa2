"""Configuration: YAML + environment overlay, validation messages that name the field, masking."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mailroom.cli import cli
from mailroom.config import AfterDeliveryAction, Security, load_settings, masked
from mailroom.errors import ConfigError

MAILBOX = {
    "name": "support",
    "host": "imap.example.com",
    "username": "incoming@example.com",
    "password": "hunter2-very-secret",
    "address": "incoming+%{key}@example.com",
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "mailroom.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_are_safe(tmp_path):
    settings = load_settings(_write(tmp_path, {"mailboxes": [MAILBOX]}), environ={})
    mailbox = settings.mailboxes[0]
    assert mailbox.security is Security.TLS and mailbox.effective_port == 993 and mailbox.verify
    assert mailbox.after_delivery_action == (AfterDeliveryAction.SEEN, None)
    assert mailbox.queue == "incoming_email" and mailbox.handler == "log"
    assert mailbox.idle_timeout <= 29 * 60


def test_environment_overrides_file_including_list_items(tmp_path):
    path = _write(
        tmp_path, {"redis_url": "redis://file:6379/0", "mailboxes": [MAILBOX, {**MAILBOX, "name": "b"}]}
    )
    env = {
        "MAILROOM_REDIS_URL": "redis://env:6379/1",
        "MAILROOM_MAILBOXES__1__FOLDER": "Replies",
        "MAILROOM_MAILBOXES__0__IDLE_TIMEOUT": "120",
    }
    settings = load_settings(path, environ=env)
    assert settings.redis_url == "redis://env:6379/1"
    assert settings.mailboxes[1].folder == "Replies"
    assert settings.mailboxes[0].idle_timeout == 120


def test_config_path_from_environment(tmp_path):
    path = _write(tmp_path, {"mailboxes": [MAILBOX]})
    assert load_settings(environ={"MAILROOM_CONFIG": str(path)}).mailboxes[0].name == "support"


def test_password_file_is_read_fresh_without_trailing_newline(tmp_path):
    secret = tmp_path / "imap-password"
    secret.write_text("s3cret\n")
    mailbox = {**MAILBOX, "password_file": str(secret)}
    del mailbox["password"]
    settings = load_settings(_write(tmp_path, {"mailboxes": [mailbox]}), environ={})
    assert settings.mailboxes[0].read_password() == "s3cret"
    secret.write_text("rotated\n")
    assert settings.mailboxes[0].read_password() == "rotated"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"security": "none"}, "allow_insecure"),
        ({"idle_timeout": 3600}, "mailboxes.0.idle_timeout"),
        ({"after_delivery": "archive"}, "mailboxes.0.after_delivery: must be seen, delete or move:<folder>"),
        ({"address": "incoming+%{key}+%{key}@example.com"}, "mailboxes.0.address"),
        ({"handler": "nonsense"}, "mailboxes.0.handler"),
        ({"password_file": "/nonexistent"}, "exactly one of password or password_file"),
        ({"port": 0}, "mailboxes.0.port"),
    ],
)
def test_each_problem_names_its_field(tmp_path, override, expected):
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, {"mailboxes": [{**MAILBOX, **override}]}), environ={})
    assert any(expected in problem for problem in info.value.problems), info.value.problems


def test_security_none_is_fine_on_loopback(tmp_path):
    settings = load_settings(
        _write(tmp_path, {"mailboxes": [{**MAILBOX, "host": "127.0.0.1", "security": "none"}]}), environ={}
    )
    assert settings.mailboxes[0].effective_port == 143


def test_unknown_fields_and_duplicate_names_are_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, {"mailboxes": [MAILBOX], "colour": "blue"}), environ={})
    assert info.value.problems == ["colour: Extra inputs are not permitted"]
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, {"mailboxes": [MAILBOX, MAILBOX]}), environ={})
    assert info.value.problems == ["config: mailbox names must be unique: support"]


def test_masked_hides_passwords(tmp_path):
    settings = load_settings(
        _write(tmp_path, {"redis_url": "redis://user:pw-secret@redis:6379/0", "mailboxes": [MAILBOX]}),
        environ={},
    )
    text = yaml.safe_dump(masked(settings))
    assert "hunter2-very-secret" not in text and "pw-secret" not in text
    assert "**********" in text


def test_check_config_prints_masked_config(tmp_path):
    result = CliRunner().invoke(
        cli, ["--config", str(_write(tmp_path, {"mailboxes": [MAILBOX]})), "check-config"]
    )
    assert result.exit_code == 0, result.output
    assert "hunter2-very-secret" not in result.output
    assert "imap.example.com" in result.output


def test_check_config_reports_every_problem_and_exits_2(tmp_path):
    bad = {"mailboxes": [{**MAILBOX, "port": "many", "after_delivery": "archive"}], "redis_url": "http://x"}
    result = CliRunner().invoke(cli, ["--config", str(_write(tmp_path, bad)), "check-config"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("config error:")]
    assert len(lines) == 3, result.output
    assert "Traceback" not in result.output


def test_unreadable_and_invalid_yaml_files(tmp_path):
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "missing.yml"), "check-config"])
    assert result.exit_code == 2 and "missing.yml" in result.output
    broken = tmp_path / "broken.yml"
    broken.write_text("mailboxes: [\n")
    result = CliRunner().invoke(cli, ["--config", str(broken), "check-config"])
    assert result.exit_code == 2 and "not valid YAML" in result.output
