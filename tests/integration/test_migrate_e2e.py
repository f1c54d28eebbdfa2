"""An Omnibus node's config (the mail_room.yml GitLab renders, or gitlab.yml itself) imported with
`mailroom import`, then run as it is: mail APPENDed to a real
Dovecot travels through the watcher, Redis and a worker to a GitLab-style receiver that verifies the JWT
the way GitLab's internal mail_room API does."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from devstack import append_messages, make_message
from mailroom.cli import cli
from tests.receivers import gitlab_receiver
from tests.support import polled_count, queue, run_worker, use_config, wait_for, watching

pytestmark = pytest.mark.integration

WAIT = 60.0  # generous: a loaded machine (Dovecot auth, reconnect backoff) must not fail these


DATA = Path(__file__).resolve().parents[1] / "data" / "migrate"
SECRET = b"0123456789abcdef0123456789abcdef"


def _mail_room_yml(path: Path, account, url: str, secret_path: Path) -> Path:
    """The Omnibus fixture, its first mailbox pointed at the test's Dovecot and receiver."""
    data = yaml.safe_load((DATA / "omnibus_mail_room.yml").read_text())
    box = data[":mailboxes"][0]
    box.update({":host": account.host, ":port": account.port, ":ssl": False, ":email": account.username})
    box[":password"] = account.password
    box[":delivery_options"][":delivery_url"] = f"{url}/api/v4/internal/mail_room/incoming_email"
    box[":delivery_options"][":jwt_secret_path"] = str(secret_path)
    data[":mailboxes"] = [box]
    path.write_text(yaml.safe_dump(data))
    return path


def _gitlab_yml(path: Path, account, url: str, secret_path: Path) -> Path:
    """The gitlab.yml fixture, incoming_email pointed at the test's Dovecot and receiver."""
    data = yaml.safe_load((DATA / "gitlab.yml").read_text())
    section = data["production"]["incoming_email"]
    section.update(host=account.host, port=account.port, ssl=False, user=account.username)
    section.update(password=account.password, gitlab_url=url, secret_file=str(secret_path))
    section["address"] = "incoming+%{key}@gitlab.example.com"
    data["production"]["service_desk_email"]["enabled"] = False
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("write_source", [_mail_room_yml, _gitlab_yml], ids=["mail_room.yml", "gitlab.yml"])
def test_an_imported_omnibus_config_carries_mail_to_gitlab(
    write_source, imap_account, redis_url, tmp_path, monkeypatch
):
    imap = (imap_account.host, imap_account.port, imap_account.username, imap_account.password)
    secret_path = tmp_path / "gitlab_incoming_email_secret"
    secret_path.write_text(base64.b64encode(SECRET).decode() + "\n")
    with gitlab_receiver({"incoming_email": SECRET}) as gitlab:
        source = write_source(tmp_path / "source.yml", imap_account, gitlab.url, secret_path)
        config = tmp_path / "mailroom.yml"
        secrets = tmp_path / "secrets"
        args = ["import", str(source), "-o", str(config), "--secrets-dir", str(secrets)]
        args += ["--redis-url", redis_url, "--address", "incoming+%{key}@gitlab.example.com"]
        imported = CliRunner().invoke(cli, args)
        assert imported.exit_code == 0, imported.output
        # What the import asks before starting: the password, inline in mail_room.yml, goes to a file.
        assert f"write it to {secrets}/incoming_email-password" in imported.stderr
        secrets.mkdir()
        (secrets / "incoming_email-password").write_text(imap_account.password + "\n")
        checked = CliRunner().invoke(cli, ["--config", str(config), "check-config"])
        assert checked.exit_code == 0, checked.output

        settings = use_config(monkeypatch, config)
        raw = make_message(1, to="incoming+abc123@gitlab.example.com")
        with watching(settings):
            append_messages(*imap, [raw])
            wait_for(lambda: len(queue(redis_url)) == 1, timeout=WAIT)
            # delete_after_delivery, after the enqueue; expunge_deleted: false (GitLab's) carried over
            wait_for(lambda: polled_count(*imap, criteria=["DELETED"]) == 1, timeout=WAIT)
        assert queue(redis_url).jobs[0].args[0]["key"] == "abc123"
        run_worker(redis_url)
    ((path, headers, body),) = gitlab.accepted
    assert path == "/api/v4/internal/mail_room/incoming_email"
    assert body == raw and headers["content-type"] == "text/plain"
    assert gitlab.refused == []
