"""Auto-replies and bounces are queued and recorded, but by default never reach the handler."""

from __future__ import annotations

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from devstack import append_messages, count, make_message
from mailroom import history
from mailroom.rqworker import MailroomSimpleWorker
from tests.support import handled, mailbox_config, queue, use_config, wait_for, watching, write_config

pytestmark = pytest.mark.integration

OUT_OF_OFFICE = [("Auto-Submitted", "auto-replied"), ("X-Autoreply", "yes")]


def _work(redis_url: str) -> None:
    connection = redis.Redis.from_url(redis_url)
    queues = [Queue("incoming_email", connection=connection, serializer=JSONSerializer)]
    MailroomSimpleWorker(queues, connection=connection, serializer=JSONSerializer).work(burst=True)


@pytest.mark.parametrize(("policy", "reaches_handler"), [("skip", False), ("deliver", True)])
def test_auto_reply_policy(imap_account, redis_url, tmp_path, monkeypatch, policy, reaches_handler):
    config = mailbox_config(imap_account, auto_replies=policy)
    settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, config))
    imap = (imap_account.host, imap_account.port, imap_account.username, imap_account.password)
    with watching(settings):
        append_messages(*imap, [make_message(1, headers=OUT_OF_OFFICE), make_message(2)])
        wait_for(lambda: count(*imap) == 0)
    job_ids = sorted(job.id for job in queue(redis_url).jobs)
    _work(redis_url)
    records = handled(redis_url)
    assert any(r.endswith("|key2") for r in records)
    assert any(r.endswith("|key1") for r in records) is reaches_handler
    statuses = {history.get(redis.Redis.from_url(redis_url), job_id).status for job_id in job_ids}
    expected = (
        {history.Status.HANDLED} if reaches_handler else {history.Status.HANDLED, history.Status.SKIPPED}
    )
    assert statuses == expected
