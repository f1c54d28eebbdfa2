"""The Rails Action Mailbox recipe of docs/handlers.md, run as written: mail APPENDed to a real Dovecot goes
through the watcher, Redis and a worker to a stand-in of Rails' relay ingress that checks what Rails
checks (basic auth actionmailbox:PASSWORD, Content-Type message/rfc822), and its refusals fail the job."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from devstack import append_messages, make_message
from mailroom.inject import inject
from mailroom.queue import MailQueue
from mailroom.redis_client import connect
from tests.receivers import RELAY_PATH, action_mailbox_relay
from tests.support import polled_count, queue, run_worker, use_config, wait_for, watching

pytestmark = pytest.mark.integration

WAIT = 60.0  # generous: a loaded machine (Dovecot auth, reconnect backoff) must not fail these

DOCS = Path(__file__).resolve().parents[2] / "docs" / "handlers.md"
PASSWORD = "ingress-password-0123456789"


def _recipe() -> dict[str, Any]:
    """The recipe's config block, as the page shows it."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", DOCS.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    (block,) = [b for b in blocks if RELAY_PATH in b]
    return yaml.safe_load(block)


def _config(tmp_path: Path, redis_url: str, account, relay_url: str, **webhook: Any) -> Path:
    config = _recipe()
    (box,) = config["mailboxes"]
    assert box["address"] == "inbound@example.com"  # a catch-all: no %{key}
    imap_password = tmp_path / "imap-password"
    imap_password.write_text(account.password + "\n")
    ingress_password = tmp_path / "ingress-password"
    ingress_password.write_text(PASSWORD + "\n")
    box.update(host=account.host, port=account.port, security="none", username=account.username)
    box.update(password_file=str(imap_password), retries=[0, 0])
    box["webhook"].update(url=relay_url + RELAY_PATH, password_file=str(ingress_password), **webhook)
    config["redis_url"] = redis_url
    path = tmp_path / "mailroom.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_stand_in_refuses_what_rails_refuses() -> None:
    good = "Basic " + base64.b64encode(f"actionmailbox:{PASSWORD}".encode()).decode()
    wrong_user = "Basic " + base64.b64encode(f"mailroom:{PASSWORD}".encode()).decode()
    rfc822 = {"Content-Type": "message/rfc822"}
    with action_mailbox_relay(PASSWORD) as relay:
        url = relay.url + RELAY_PATH
        assert httpx.post(url, content=b"x", headers=rfc822).status_code == 401
        assert (
            httpx.post(url, content=b"x", headers={**rfc822, "Authorization": wrong_user}).status_code == 401
        )
        text = {"Content-Type": "text/plain", "Authorization": good}
        assert httpx.post(url, content=b"x", headers=text).status_code == 415
        charset = {"Content-Type": "message/rfc822; charset=utf-8", "Authorization": good}
        assert httpx.post(url, content=b"x", headers=charset).status_code == 204
        assert httpx.post(url, content=b"x", headers={**rfc822, "Authorization": good}).status_code == 204
        assert httpx.post(relay.url + "/elsewhere", content=b"x", headers=rfc822).status_code == 404


def test_the_recipe_delivers_mail_to_action_mailbox(imap_account, redis_url, tmp_path, monkeypatch):
    imap = (imap_account.host, imap_account.port, imap_account.username, imap_account.password)
    with action_mailbox_relay(PASSWORD) as relay:
        settings = use_config(monkeypatch, _config(tmp_path, redis_url, imap_account, relay.url))
        raw = make_message(1, to="Inbound <inbound@example.com>")
        with watching(settings):
            append_messages(*imap, [raw])
            wait_for(lambda: len(queue(redis_url)) == 1, timeout=WAIT)
            wait_for(lambda: polled_count(*imap) == 0, timeout=WAIT)
        (job,) = queue(redis_url).jobs
        assert job.args[0]["key"] is None  # the catch-all address: no reply key, and no config error
        run_worker(redis_url)
        assert FinishedJobRegistry(queue=queue(redis_url)).get_job_ids() == [job.id]
    ((path, headers, body),) = relay.accepted
    assert path == RELAY_PATH and body == raw
    assert headers["content-type"] == "message/rfc822"
    assert (
        headers["authorization"] == "Basic " + base64.b64encode(f"actionmailbox:{PASSWORD}".encode()).decode()
    )
    assert relay.refused == []


@pytest.mark.parametrize(
    ("webhook", "status"),
    [({"username": "mailroom"}, 401), ({"content_type": "text/plain"}, 415)],
)
def test_what_rails_refuses_fails_the_job_without_retries(
    webhook, status, imap_account, redis_url, tmp_path, monkeypatch
):
    with action_mailbox_relay(PASSWORD) as relay:
        settings = use_config(monkeypatch, _config(tmp_path, redis_url, imap_account, relay.url, **webhook))
        mailbox = settings.mailboxes[0]
        result = inject(
            MailQueue(connect(redis_url), settings), mailbox, make_message(2, to="inbound@example.com")
        )
        run_worker(redis_url)
    assert [s for s, _ in relay.refused] == [status]  # one attempt: 4xx is permanent
    assert relay.accepted == []
    assert FailedJobRegistry(queue=queue(redis_url)).get_job_ids() == [result.job_id]
