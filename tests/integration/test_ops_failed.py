"""Failed mail on the real stack: fail -> failed registry -> list/show/export -> requeue -> handled once."""

from __future__ import annotations

import json

import pytest
import redis
from click.testing import CliRunner

import workers.jobs
from devstack import append_messages, count, make_message
from mailroom.cli import cli
from mailroom.rqworker import MailroomSimpleWorker
from tests.support import handled, mailbox_config, queue, record, use_config, wait_for, watching, write_config
from workers.errors import PermanentHandlerError
from workers.incoming import IncomingEmail

pytestmark = pytest.mark.integration

FIXED_FLAG = "test:handler_fixed"
FLAKY_HANDLER = "tests.integration.test_ops_failed:flaky"


def flaky(email: IncomingEmail) -> str:
    """Fails permanently for subjects containing FAIL until the test sets the 'fixed' flag in Redis."""
    client = redis.Redis.from_url(workers.jobs.settings().redis_url)
    if "FAIL" in (email.subject or "") and not client.exists(FIXED_FLAG):
        raise PermanentHandlerError(f"cannot handle {email.subject}")
    return record(email)


def work(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    from rq import Queue
    from rq.serializers import JSONSerializer

    q = Queue("incoming_email", connection=connection, serializer=JSONSerializer)
    MailroomSimpleWorker([q], connection=connection, serializer=JSONSerializer).work(burst=True)


def run(config, *args: str):
    result = CliRunner().invoke(cli, ["--config", str(config), "--log-format", "json", *args])
    return result


@pytest.fixture
def failed_stack(imap_account, redis_url, tmp_path, monkeypatch):
    """6 messages through the real watcher: 3 fail (subjects FAIL-n), 3 are handled."""
    box = mailbox_config(imap_account, handler=FLAKY_HANDLER)
    config = write_config(tmp_path / "c.yml", redis_url, box)
    settings = use_config(monkeypatch, config)
    imap = (imap_account.host, imap_account.port, imap_account.username, imap_account.password)
    messages = [
        make_message(i, subject=f"FAIL-{i}" if i % 2 == 0 else f"ok-{i}", to=f"incoming+key{i}@example.com")
        for i in range(6)
    ]
    append_messages(*imap, messages)
    with watching(settings):
        wait_for(lambda: count(*imap) == 0)
    assert len(queue(redis_url)) == 6
    work(redis_url)
    return config, messages


def test_failed_list_show_export_and_requeue_end_to_end(failed_stack, redis_url):
    config, messages = failed_stack
    assert len(handled(redis_url)) == 3

    listing = run(config, "failed", "list", "--json")
    assert listing.exit_code == 0, listing.output
    items = json.loads(listing.output)
    assert sorted(i["subject"] for i in items) == ["FAIL-0", "FAIL-2", "FAIL-4"]
    assert all("PermanentHandlerError" in i["error"] and i["attempts"] == 1 for i in items)
    table = run(config, "failed", "list")
    assert "FAIL-2" in table.output and "3 failed message(s)" in table.output

    by_subject = {i["subject"]: i["job_id"] for i in items}
    shown = run(config, "failed", "show", by_subject["FAIL-2"])
    assert shown.exit_code == 0 and "Traceback" in shown.output and "cannot handle FAIL-2" in shown.output
    exported = CliRunner().invoke(cli, ["--config", str(config), "failed", "export", by_subject["FAIL-2"]])
    assert exported.exit_code == 0
    assert exported.stdout_bytes == messages[2]  # byte-identical to what was APPENDed

    dry = run(config, "requeue", "--all", "--dry-run")
    assert dry.exit_code == 0 and "3 message(s) would be requeued" in dry.output
    assert len(json.loads(run(config, "failed", "list", "--json").output)) == 3  # dry run moved nothing

    redis.Redis.from_url(redis_url).set(FIXED_FLAG, 1)  # the handler is "fixed"
    moved = run(config, "requeue", "--all")
    assert moved.exit_code == 0 and "requeued 3 message(s)" in moved.output
    again = run(config, "requeue", "--all")  # safe to run twice: nothing left to move
    assert again.exit_code == 0 and "requeued 0 message(s)" in again.output
    gone = run(config, "requeue", by_subject["FAIL-0"])
    assert gone.exit_code == 1 and "is not failed" in gone.output

    job = queue(redis_url).fetch_job(by_subject["FAIL-4"])
    assert job.args[0]["raw"] and job.origin == "incoming_email"  # data kept, back on its own queue
    work(redis_url)
    records = handled(redis_url)
    assert len(records) == 6 and len(set(records)) == 6  # each handled exactly once
    assert json.loads(run(config, "failed", "list", "--json").output) == []

    hist = json.loads(run(config, "history", "--key", "key2", "--json").output)
    assert len(hist) == 1
    assert hist[0]["status"] == "handled"
    assert [t.split("@")[0] for t in hist[0]["trail"]] == ["queued", "failed", "requeued", "handled"]


def test_filters_select_exactly_what_they_say(failed_stack, redis_url):
    config, _ = failed_stack

    def ids(*args: str) -> list[str]:
        result = run(config, "failed", "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return sorted(i["subject"] for i in json.loads(result.output))

    assert ids() == ["FAIL-0", "FAIL-2", "FAIL-4"]
    assert ids("--key", "key4") == ["FAIL-4"]
    assert ids("--key", "key1") == []  # handled, not failed
    assert ids("--error", "cannot handle fail-0") == ["FAIL-0"]  # case-insensitive
    assert ids("--mailbox", "support") == ["FAIL-0", "FAIL-2", "FAIL-4"]
    assert ids("--mailbox", "other") == []
    assert ids("--queue", "other_queue") == []
    assert ids("--since", "1h") == ["FAIL-0", "FAIL-2", "FAIL-4"]
    assert ids("--since", "2999-01-01T00:00:00") == []
    bad = run(config, "failed", "list", "--since", "yesterday")
    assert bad.exit_code == 2 and "neither a duration" in bad.output

    redis.Redis.from_url(redis_url).set(FIXED_FLAG, 1)
    moved = run(config, "requeue", "--all", "--key", "key0")
    assert "requeued 1 message(s)" in moved.output
    assert ids() == ["FAIL-2", "FAIL-4"]
    statuses = json.loads(run(config, "history", "--json", "--status", "failed").output)
    assert sorted(e["key"] for e in statuses) == ["key2", "key4"]


def test_inject_is_idempotent_and_reaches_the_handler(imap_account, redis_url, tmp_path, monkeypatch):
    config = write_config(tmp_path / "c.yml", redis_url, mailbox_config(imap_account))
    use_config(monkeypatch, config)
    eml = tmp_path / "m.eml"
    eml.write_bytes(make_message(7, to="incoming+injected@example.com"))
    first = run(config, "inject", str(eml))
    assert first.exit_code == 0 and first.output.startswith("queued:") and "key=injected" in first.output
    second = run(config, "inject", str(eml))
    assert second.exit_code == 0 and "already queued" in second.output
    args = ["--config", str(config), "inject", "-", "--force"]
    forced = CliRunner().invoke(cli, args, input=eml.read_bytes())
    assert forced.exit_code == 0 and forced.output.startswith("queued:")
    assert len(queue(redis_url)) == 2
    job = queue(redis_url).jobs[0]
    assert job.args[0]["source"] == "inject"
    work(redis_url)
    assert [r.split("|")[1] for r in handled(redis_url)] == ["injected", "injected"]
    missing = run(config, "inject", str(tmp_path / "nope.eml"))
    assert missing.exit_code == 1


def test_a_requeued_job_gets_its_retries_back(redis_url, tmp_path, monkeypatch):
    from mailroom import failed as failed_lib
    from mailroom.queue import MailQueue
    from mailroom.redis_client import connect
    from mailroom.schema import JobPayload

    mailbox = {
        "name": "support",
        "host": "127.0.0.1",
        "security": "none",
        "username": "u",
        "password": "p",
        "handler": "tests.chaos.handlers:poison_or_record",
        "retries": [0, 0],
    }
    settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, mailbox))
    raw = make_message(1, to="incoming+poison-1@example.com")
    payload = JobPayload(
        "support",
        "imap",
        1,
        1,
        "2026-11-25T00:00:00+00:00",
        len(raw),
        False,
        "m@x",
        "poison-1",
        "To",
        "a@b",
        "s",
        False,
        False,
        None,
        raw,
    )
    connection = connect(redis_url)
    (job,) = MailQueue(connection, settings).enqueue_batch(settings.mailboxes[0], [payload])
    work(redis_url)
    assert queue(redis_url).fetch_job(job.job_id).retries_left == 0
    failed_lib.requeue(connection, job.job_id)
    assert queue(redis_url).fetch_job(job.job_id).retries_left == 2
