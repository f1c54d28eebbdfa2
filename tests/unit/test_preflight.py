"""Fail fast (issue 10 part 3): check-config and every process's start refuse a config that would fail
every message (a handler that does not import, a secret file that cannot be read, a webhook secret that
is not Base64, a webhook URL with a password or in clear text), with one line naming the field, exit 2.
And printed config masks every secret: userinfo, ?password= query parameters, Sentinel passwords."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mailroom.cli import cli

WEBHOOK_SECRET = "c2lnbmluZy1rZXk="  # Base64 of "signing-key"


def _mailbox(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    secret = tmp_path / "webhook-secret"
    if not secret.exists():
        secret.write_text(WEBHOOK_SECRET + "\n")
    mailbox: dict[str, Any] = {
        "name": "support",
        "host": "imap.example.com",
        "username": "incoming",
        "password": "imap-password-123",
        "handler": "webhook",
        "webhook": {"url": "https://app.example.com/mail", "secret_file": str(secret)},
    }
    mailbox.update(fields)
    return mailbox


def _run(tmp_path: Path, config: dict[str, Any], command: str = "check-config") -> tuple[int, list[str], str]:
    path = tmp_path / "mailroom.yml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["--config", str(path), command], catch_exceptions=False)
    errors = [line for line in result.output.splitlines() if line.startswith("config error:")]
    return result.exit_code, errors, result.output


def test_a_good_config_passes(tmp_path: Path) -> None:
    code, errors, output = _run(tmp_path, {"mailboxes": [_mailbox(tmp_path)]})
    assert (code, errors) == (0, []), output


def test_a_handler_that_does_not_import_is_refused(tmp_path: Path) -> None:
    code, errors, _ = _run(tmp_path, {"mailboxes": [_mailbox(tmp_path, handler="nosuchmodule:handle")]})
    assert code == 2
    assert errors == [
        "config error: mailboxes.0.handler: nosuchmodule:handle cannot be imported:"
        " ModuleNotFoundError: No module named 'nosuchmodule'"
    ]


def test_a_handler_that_is_missing_or_not_callable_is_refused(tmp_path: Path) -> None:
    mailboxes = [
        _mailbox(tmp_path, handler="os.path:no_such_function"),
        _mailbox(tmp_path, name="b", handler="os:sep"),
        _mailbox(tmp_path, name="c", handler="os.path:join"),  # fine
    ]
    code, errors, output = _run(tmp_path, {"mailboxes": mailboxes})
    assert code == 2
    assert len(errors) == 2, output
    assert errors[0].startswith(
        "config error: mailboxes.0.handler: os.path:no_such_function cannot be imported"
    )
    assert errors[1] == "config error: mailboxes.1.handler: os:sep is not callable"


def test_a_handler_module_that_raises_on_import_is_refused(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('settings missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, errors, _ = _run(tmp_path, {"mailboxes": [_mailbox(tmp_path, handler="broken_app:handle")]})
    assert code == 2
    assert errors == [
        "config error: mailboxes.0.handler: broken_app:handle cannot be imported:"
        " RuntimeError: settings missing"
    ]
    sys.modules.pop("broken_app", None)


def test_a_webhook_secret_that_is_not_base64_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "webhook-secret"
    secret.write_text("not base64: a plain passphrase!\n")
    code, errors, output = _run(tmp_path, {"mailboxes": [_mailbox(tmp_path)]})
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("config error: mailboxes.0.webhook.secret_file: ")
    assert "Base64" in errors[0]
    assert "plain passphrase" not in output


@pytest.mark.parametrize("content", ["", "\n", "  \n"])
def test_an_empty_secret_file_is_refused(tmp_path: Path, content: str) -> None:
    password = tmp_path / "imap-password"
    password.write_text(content)
    mailbox = _mailbox(tmp_path, password=None, password_file=str(password))
    del mailbox["password"]
    code, errors, _ = _run(tmp_path, {"mailboxes": [mailbox]})
    assert code == 2
    assert errors == [f"config error: mailboxes.0.password_file: {password} is empty"]


def test_an_unreadable_secret_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "webhook-secret"
    secret.write_text(WEBHOOK_SECRET)
    secret.chmod(0)
    config = tmp_path / "mailroom.yml"
    config.write_text(yaml.safe_dump({"mailboxes": [_mailbox(tmp_path)]}))
    command = [sys.executable, "-m", "mailroom", "--config", str(config), "check-config"]
    if os.geteuid() == 0:
        # Root reads any file through CAP_DAC_OVERRIDE: drop it (and DAC_READ_SEARCH), as a pod's
        # non-root user has neither, so the file's mode 0 applies.
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to run this test as root"
        caps = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert result.returncode == 2, result.stdout + result.stderr
    assert errors == [
        f"config error: mailboxes.0.webhook.secret_file: {secret} cannot be read: Permission denied"
    ]


def test_an_empty_provider_key_file_is_refused(tmp_path: Path) -> None:
    """Files outside the mailboxes are read too (every ``*_file`` field of the config)."""
    key = tmp_path / "signing-key"
    key.write_text("")
    config = {"mailboxes": [_mailbox(tmp_path)], "provider": {"signing_key_file": str(key)}}
    code, errors, _ = _run(tmp_path, config)
    assert code == 2
    assert errors == [f"config error: provider.signing_key_file: {key} is empty"]


def test_a_missing_secret_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code, errors, _ = _run(
        tmp_path, {"mailboxes": [_mailbox(tmp_path, password_file=str(missing), password=None)]}
    )
    assert code == 2
    assert any("password_file" in line and str(missing) in line for line in errors), errors


def test_a_webhook_url_with_userinfo_is_refused_without_echoing_the_password(tmp_path: Path) -> None:
    webhook = {"url": "https://gitlab:s3cr3t-pw@app.example.com/mail", "secret_file": str(tmp_path / "s")}
    (tmp_path / "s").write_text(WEBHOOK_SECRET)
    code, errors, output = _run(tmp_path, {"mailboxes": [_mailbox(tmp_path, webhook=webhook)]})
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith(
        "config error: mailboxes.0.webhook.url: must not contain"
    )
    assert "s3cr3t-pw" not in output


def test_a_clear_text_webhook_off_loopback_needs_allow_insecure(tmp_path: Path) -> None:
    secret = str(tmp_path / "webhook-secret")
    _mailbox(tmp_path)  # writes the secret
    plain = {"url": "http://app.example.com/mail", "secret_file": secret}
    code, errors, _ = _run(tmp_path, {"mailboxes": [_mailbox(tmp_path, webhook=plain)]})
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("config error: mailboxes.0.webhook.url: http:// ")
    allowed = {**plain, "allow_insecure": True}
    loopback = {**plain, "url": "http://127.0.0.1:8080/mail"}
    for webhook in (allowed, loopback):
        code, errors, output = _run(tmp_path, {"mailboxes": [_mailbox(tmp_path, webhook=webhook)]})
        assert (code, errors) == (0, []), output


@pytest.mark.parametrize("command", ["watch", "worker", "webhooks"])
def test_every_process_refuses_at_start(tmp_path: Path, command: str) -> None:
    config = {
        "mailboxes": [_mailbox(tmp_path, handler="nosuchmodule:handle")],
        "redis_url": "redis://127.0.0.1:1/0",  # never reached: the process stops before connecting
        "provider": {"signing_key": "k"},
    }
    code, errors, output = _run(tmp_path, config, command)
    assert code == 2, output
    assert errors == [
        "config error: mailboxes.0.handler: nosuchmodule:handle cannot be imported:"
        " ModuleNotFoundError: No module named 'nosuchmodule'"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    secret = tmp_path / "webhook-secret"
    secret.write_text("%%%")
    empty = tmp_path / "empty"
    empty.write_text("")
    mailboxes = [
        _mailbox(tmp_path, handler="nosuchmodule:handle"),
        {**_mailbox(tmp_path, name="b"), "password": None, "password_file": str(empty)},
    ]
    del mailboxes[1]["password"]
    code, errors, output = _run(tmp_path, {"mailboxes": mailboxes})
    assert code == 2
    fields = [line.split(": ")[1] for line in errors]
    assert fields == [
        "mailboxes.0.webhook.secret_file",
        "mailboxes.0.handler",
        "mailboxes.1.password_file",
        "mailboxes.1.webhook.secret_file",
    ], output


def test_printed_config_masks_every_secret(tmp_path: Path) -> None:
    config = {
        "redis_url": "redis://default:userinfo-pw@redis.example.com:6379/0?password=query-pw&db=0",
        "mailboxes": [_mailbox(tmp_path)],
        "sentry_dsn": "https://dsn-key@o0.ingest.sentry.io/1",
        "provider": {"signing_key": "provider-signing-key", "api_key": "provider-api-key"},
    }
    code, _, output = _run(tmp_path, config)
    assert code == 0, output
    for secret in ("userinfo-pw", "query-pw", "imap-password-123", "dsn-key", "provider-signing-key"):
        assert secret not in output
    assert "provider-api-key" not in output
    printed = yaml.safe_load(output)
    assert (
        printed["redis_url"] == "redis://default:**********@redis.example.com:6379/0?password=**********&db=0"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "redis+sentinel://:sentinel-pw@s1:26379,s2:26379/mymaster/0",
            "redis+sentinel://:**********@s1:26379,s2:26379/mymaster/0",
        ),
        (
            "redis://r:6379/0?sentinel_password=sp&password=p",
            "redis://r:6379/0?sentinel_password=**********&password=**********",
        ),
        ("rediss://token-only@r:6380/0", "rediss://**********@r:6380/0"),
        ("redis://r:6379/0", "redis://r:6379/0"),
    ],
)
def test_redis_urls_are_masked(tmp_path: Path, url: str, shown: str) -> None:
    code, _, output = _run(tmp_path, {"redis_url": url, "mailboxes": [_mailbox(tmp_path)]})
    assert code == 0, output
    assert yaml.safe_load(output)["redis_url"] == shown
