"""mail_room's expunge_deleted: false and search_command, as mailroom's expunge_deleted and search, on a real
Dovecot: deleted mail stays flagged \\Deleted for the server to expunge and is never fetched again; a search
narrows what is fetched and leaves the rest untouched."""

from __future__ import annotations

import pytest

from devstack import append_messages, make_message
from tests.support import mailbox_config, polled_count, queue, use_config, wait_for, watching, write_config

pytestmark = pytest.mark.integration

WAIT = 60.0  # generous: a loaded machine (Dovecot auth, reconnect backoff) must not fail these


def _imap(account):
    return (account.host, account.port, account.username, account.password)


def test_expunge_deleted_false_leaves_the_batch_flagged_deleted(
    imap_account, redis_url, tmp_path, monkeypatch
):
    box = mailbox_config(imap_account, after_delivery="delete", expunge_deleted=False)
    settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, box))
    with watching(settings):
        append_messages(*_imap(imap_account), [make_message(1), make_message(2)])
        wait_for(lambda: polled_count(*_imap(imap_account), criteria=["DELETED"]) == 2, timeout=WAIT)
        append_messages(*_imap(imap_account), [make_message(3)])  # a later catch-up must skip the two
        wait_for(lambda: polled_count(*_imap(imap_account), criteria=["DELETED"]) == 3, timeout=WAIT)
    wait_for(
        lambda: polled_count(*_imap(imap_account), criteria=["ALL"]) == 3, timeout=WAIT
    )  # still there: not expunged
    assert len(queue(redis_url)) == 3  # each queued once, none fetched again


def test_expunge_deleted_true_is_the_default(imap_account, redis_url, tmp_path, monkeypatch):
    box = mailbox_config(imap_account, after_delivery="delete")
    settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, box))
    with watching(settings):
        append_messages(*_imap(imap_account), [make_message(1)])
        wait_for(lambda: polled_count(*_imap(imap_account), criteria=["ALL"]) == 0, timeout=WAIT)
    assert len(queue(redis_url)) == 1


def test_search_narrows_what_is_fetched(imap_account, redis_url, tmp_path, monkeypatch):
    box = mailbox_config(imap_account, search='SUBJECT "[ticket]"')
    settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, box))
    other, ticket = make_message(1, subject="hello"), make_message(2, subject="Re: [ticket] 42")
    with watching(settings):
        append_messages(*_imap(imap_account), [other, ticket])
        wait_for(lambda: len(queue(redis_url)) == 1, timeout=WAIT)
        wait_for(lambda: polled_count(*_imap(imap_account), criteria=["UNSEEN"]) == 1, timeout=WAIT)
    (job,) = queue(redis_url).jobs
    assert job.args[0]["subject"] == "Re: [ticket] 42"
    wait_for(
        lambda: polled_count(*_imap(imap_account), criteria=["UNSEEN", "SUBJECT", "hello"]) == 1, timeout=WAIT
    )  # untouched
