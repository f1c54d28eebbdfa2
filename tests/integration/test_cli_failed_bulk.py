"""The failed-mail commands in bulk, on a real Redis: --limit, purge, export to a directory and an mbox,
requeue --json, exit codes that agree between --dry-run and the real run, tables that fit 120 columns."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from devstack import make_message
from mailroom.cli import cli
from mailroom.config import Settings
from mailroom.inject import inject
from mailroom.queue import MailQueue
from mailroom.redis_client import connect
from tests.support import queue, run_worker, use_config, write_config
from workers.errors import PermanentHandlerError
from workers.incoming import IncomingEmail

pytestmark = pytest.mark.integration

FAILING = "tests.integration.test_cli_failed_bulk:always_fails"
LONG = "a very long subject that goes on and on " * 4


def always_fails(email: IncomingEmail) -> str:
    raise PermanentHandlerError(f"cannot handle {email.subject}: " + "x" * 200)


def fail_messages(
    config: Path, settings: Settings, redis_url: str, n: int, size: int | None = None
) -> list[bytes]:
    """``n`` messages injected and failed by a real worker (subjects m0..m{n-1}, keys k0..)."""
    mail_queue = MailQueue(connect(redis_url), settings)
    messages = [
        make_message(
            i, subject=f"m{i} {LONG if i == 0 else ''}".strip(), to=f"incoming+k{i}@example.com", size=size
        )
        for i in range(n)
    ]
    for raw in messages:
        inject(mail_queue, settings.mailboxes[0], raw)
    run_worker(redis_url)
    return messages


@pytest.fixture
def stack(redis_url, tmp_path, monkeypatch):
    box = {"name": "support", "host": "127.0.0.1", "security": "none", "username": "u", "password": "p",
           "handler": FAILING, "retries": []}  # fmt: skip
    config = write_config(tmp_path / "c.yml", redis_url, box)
    return config, use_config(monkeypatch, config)


def run(config: Path, *args: str, input: bytes | None = None):
    return CliRunner().invoke(cli, [*args, "--config", str(config)], input=input)


def listed(config: Path, *args: str) -> list[dict]:
    result = run(config, "failed", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_limit_and_a_table_that_fits_120_columns(stack, redis_url):
    config, settings = stack
    fail_messages(config, settings, redis_url, 5)
    items = listed(config)
    assert [i["subject"].split()[0] for i in items] == ["m0", "m1", "m2", "m3", "m4"]  # oldest first
    assert [i["key"] for i in items] == ["k0", "k1", "k2", "k3", "k4"]
    assert all(i["error"].startswith("workers.errors.PermanentHandlerError") for i in items)
    assert [i["subject"].split()[0] for i in listed(config, "--limit", "2")] == ["m0", "m1"]
    table = run(config, "failed", "list")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].startswith("JOB ID") and "5 failed message(s)" in lines[-1]
    assert max(len(line) for line in lines) <= 120, "\n".join(lines)
    assert any("…" in line for line in lines)  # the long subject and error were cut, not wrapped
    assert all(i["job_id"] in table.stdout for i in items)  # ids are never cut
    refused = run(config, "failed", "list", "--limit", "0")
    assert refused.exit_code == 2 and "--limit" in refused.output


def test_purge_dry_run_then_for_real_with_filters(stack, redis_url):
    config, settings = stack
    fail_messages(config, settings, redis_url, 4)
    dry = run(config, "failed", "purge", "--all", "--key", "k1", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert [(o["done"], o["reason"]) for o in json.loads(dry.stdout)] == [(True, None)]
    assert len(listed(config)) == 4  # the dry run deleted nothing
    gone = run(config, "failed", "purge", "--all", "--key", "k1")
    assert gone.exit_code == 0 and "purged 1 message(s)" in gone.stdout
    assert [i["key"] for i in listed(config)] == ["k0", "k2", "k3"]
    connection = redis.Redis.from_url(redis_url)
    assert not connection.keys("rq:job:*k1*") and len(connection.keys("rq:job:*")) == 3
    history = json.loads(run(config, "history", "--key", "k1", "--json").stdout)
    assert history[0]["status"] == "purged"
    limited = run(config, "failed", "purge", "--all", "--limit", "2", "--json")
    assert len(json.loads(limited.stdout)) == 2 and len(listed(config)) == 1


def test_dry_run_and_real_run_exit_codes_agree(stack, redis_url):
    config, settings = stack
    fail_messages(config, settings, redis_url, 2)
    real_id = listed(config)[0]["job_id"]
    for command in (["requeue"], ["failed", "purge"]):
        for extra in (["--dry-run"], []):
            result = run(config, *command, "no-such-job", *extra, "--json")
            assert result.exit_code == 1, (command, extra, result.output)
            (outcome,) = json.loads(result.stdout)
            assert outcome == {"job_id": "no-such-job", "done": False, "reason": outcome["reason"]}
            assert "no job 'no-such-job'" in outcome["reason"]
        dry = run(config, *command, real_id, "--dry-run")
        assert dry.exit_code == 0 and "1 message(s) would be" in dry.stdout
    moved = run(config, "requeue", real_id, "--json")
    assert moved.exit_code == 0 and json.loads(moved.stdout) == [
        {"job_id": real_id, "done": True, "reason": None}
    ]
    again = run(config, "requeue", real_id, "--dry-run")
    assert (
        again.exit_code == 1 and "is not failed (status: queued)" in again.output
    )  # a word, not JobStatus.QUEUED
    shown = run(config, "failed", "show", real_id, "--json")
    assert shown.exit_code == 1 and json.loads(shown.stdout)["error"].endswith("(status: queued)")
    both = run(config, "requeue", real_id, "--all")
    assert both.exit_code == 2 and "not both" in both.output


def test_export_many_to_a_directory_and_an_mbox(stack, redis_url, tmp_path):
    config, settings = stack
    messages = fail_messages(config, settings, redis_url, 3)
    items = listed(config)
    out = tmp_path / "out"
    result = run(config, "failed", "export", "--all", "--output", str(out), "--json")
    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.stdout)
    assert [o["where"] for o in outcomes] == [str(out / f"{i['job_id']}.eml") for i in items]
    assert [Path(o["where"]).read_bytes() for o in outcomes] == messages  # byte-identical
    box_path = tmp_path / "failed.mbox"
    two = run(config, "failed", "export", items[0]["job_id"], items[2]["job_id"], "--mbox", str(box_path))
    assert two.exit_code == 0 and "exported 2 message(s)" in two.stdout
    box = mailbox.mbox(box_path)
    assert [box.get_bytes(k) for k in box.iterkeys()] == [messages[0], messages[2]]
    many = run(config, "failed", "export", "--all")
    assert many.exit_code == 2 and "--output" in many.output
    one = run(config, "failed", "export", items[1]["job_id"])
    assert one.exit_code == 0 and one.stdout_bytes == messages[1]


def test_inject_many_from_files_a_directory_and_an_mbox(stack, redis_url, tmp_path):
    config, _ = stack
    directory = tmp_path / "dir"
    directory.mkdir()
    for i in range(3):
        (directory / f"{i}.eml").write_bytes(make_message(i, to=f"incoming+d{i}@example.com"))
    box_path = tmp_path / "in.mbox"
    box = mailbox.mbox(box_path)
    for i in range(25):
        box.add(make_message(100 + i, to=f"incoming+b{i}@example.com"))
    box.close()
    single = tmp_path / "one.eml"
    single.write_bytes(make_message(7, to="incoming+single@example.com"))
    result = run(config, "inject", str(single), str(directory), str(box_path), "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert len(results) == 29 and {r["state"] for r in results} == {"queued"}
    assert [r["key"] for r in results[:5]] == ["single", "d0", "d1", "d2", "b0"]
    assert results[4]["source"] == f"{box_path}#1"
    assert len(queue(redis_url)) == 29
    again = run(config, "inject", str(box_path))
    assert again.exit_code == 0 and again.stdout.count("already queued") == 25
    assert "injecting" in again.stderr  # over 20 messages: a progress bar, on stderr
    missing = run(config, "inject", str(tmp_path / "nope.eml"), "--json")
    assert missing.exit_code == 1 and "cannot read" in json.loads(missing.stdout)["error"]


def test_history_limit_must_be_positive(stack):
    config, _ = stack
    refused = run(config, "history", "--limit", "-1")
    assert refused.exit_code == 2 and "--limit" in refused.output and "-1" in refused.output


def test_requeue_all_across_many_pages_misses_nothing(stack, redis_url, monkeypatch):
    """Paging by rank while requeueing shifts the ranks: each page's next offset counts only what is left."""
    import mailroom.failed

    config, settings = stack
    fail_messages(config, settings, redis_url, 7)
    monkeypatch.setattr(mailroom.failed, "PAGE_SIZE", 2)
    dry = run(config, "requeue", "--all", "--key", "k3", "--dry-run", "--json")
    assert [o["done"] for o in json.loads(dry.stdout)] == [True]
    some = run(config, "requeue", "--all", "--limit", "3", "--json")
    assert len(json.loads(some.stdout)) == 3 and len(listed(config)) == 4
    rest = run(config, "requeue", "--all")
    assert rest.exit_code == 0 and "requeued 4 message(s)" in rest.stdout
    assert listed(config) == [] and len(queue(redis_url)) == 7
