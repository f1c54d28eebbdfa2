"""Every --json command, run as a real process with logs at debug level: stdout is exactly one JSON
document (json.loads of all of it), whatever it logs (to stderr), on success and on error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import make_message
from tests.integration.test_cli_failed_bulk import FAILING, fail_messages
from tests.support import mailbox_config, use_config, write_config

pytestmark = pytest.mark.integration


def mailroom(config: Path, *args: str, code: int = 0) -> Any:
    command = [sys.executable, "-m", "mailroom", *args, "--config", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == code, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


def test_every_json_command_prints_one_document(redis_url, imap_account, tmp_path, monkeypatch):
    box = mailbox_config(imap_account, handler=FAILING, password="wrong")
    top = {"log_format": "json", "log_level": "debug", "domain_check": {"timeout": 1}}
    config = write_config(tmp_path / "c.yml", redis_url, box, **top)
    settings = use_config(monkeypatch, config)
    fail_messages(config, settings, redis_url, 3)
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message(9, to="incoming+json@example.com"))

    listed = mailroom(config, "failed", "list", "--json")
    assert len(listed) == 3
    job_id = listed[0]["job_id"]
    assert mailroom(config, "failed", "show", job_id, "--json")["job_id"] == job_id
    assert mailroom(config, "failed", "show", "nope", "--json", code=1)["error"].startswith("no job")
    exported = mailroom(config, "failed", "export", job_id, "--output", str(tmp_path / "out"), "--json")
    assert exported[0]["done"] and Path(exported[0]["where"]).exists()
    assert len(mailroom(config, "failed", "purge", "--all", "--dry-run", "--json")) == 3
    assert len(mailroom(config, "requeue", "--all", "--dry-run", "--json")) == 3
    assert mailroom(config, "requeue", "nope", "--json", code=1)[0]["done"] is False
    assert mailroom(config, "inject", str(eml), "--json")[0]["key"] == "json"
    assert mailroom(config, "inject", str(tmp_path / "none.eml"), "--json", code=1)["error"]
    assert {e["key"] for e in mailroom(config, "history", "--json")} == {"k0", "k1", "k2", "json"}
    assert mailroom(config, "check-config", "--json")["mailboxes"][0]["password"] == "**********"

    checked = {r["name"]: r for r in mailroom(config, "check", "--json", code=1)}
    login = checked["support: login"]
    assert login["outcome"] == "fail" and "AUTHENTICATIONFAILED" in login["detail"]
    assert "b'" not in login["detail"]  # the server's reply as words, not a bytes repr

    assert mailroom(config, "suppressions", "add", "a@example.com", "--json")["address"] == "a@example.com"
    assert [r["address"] for r in mailroom(config, "suppressions", "list", "--json")] == ["a@example.com"]
    assert mailroom(config, "suppressions", "show", "a@example.com", "--json")["reason"] == "manual"
    assert mailroom(config, "suppressions", "remove", "a@example.com", "--json")["removed"] is True
    assert mailroom(config, "suppressions", "show", "a@example.com", "--json", code=1) is None

    closed = ["--nameserver", "127.0.0.1", "--port", "9"]  # nothing answers DNS there
    dns = mailroom(config, "domain", "check", "example.com", *closed, "--json", code=2)
    assert dns["ok"] is False and dns["error"].startswith("DNS lookup failed")


def test_config_errors_are_exit_2_and_json_too(tmp_path):
    config = tmp_path / "bad.yml"
    config.write_text(yaml.safe_dump({"redis_url": "redis://127.0.0.1:1/0", "mailboxes": [{"name": "x"}]}))
    done = subprocess.run(
        [sys.executable, "-m", "mailroom", "failed", "list", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "config error: mailboxes.0" in done.stderr
    error = json.loads(done.stdout)  # a script reading stdout still gets one document
    assert error["error"] == "config error" and error["problems"][0].startswith("mailboxes.0")
