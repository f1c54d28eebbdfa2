"""The devstack fixtures start real servers that behave like the ones mailroom will meet."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from imapclient import IMAPClient

from devstack import (
    Dovecot,
    ImapAccount,
    RedisServer,
    TLSFiles,
    append_messages,
    count,
    make_message,
    recreate_folder,
    uidvalidity,
)
from devstack.ports import port_is_open

pytestmark = pytest.mark.integration


def login(account: ImapAccount) -> IMAPClient:
    client = IMAPClient(account.host, port=account.port, ssl=False, timeout=10)
    client.login(account.username, account.password)
    return client


def creds(account: ImapAccount) -> tuple[str, int, str, str]:
    return account.host, account.port, account.username, account.password


def test_append_then_read_back(imap_account: ImapAccount) -> None:
    raw = make_message(7, subject="hello")
    assert append_messages(*creds(imap_account), [raw]) == 1

    client = login(imap_account)
    try:
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["UNSEEN"])
        assert len(uids) == 1
        body = client.fetch(uids, [b"BODY.PEEK[]"])[uids[0]][b"BODY[]"]
    finally:
        client.logout()
    assert body == raw
    assert b"Message-ID: <msg-7-" in body and b"To: incoming+key7@example.com" in body


def test_each_account_starts_empty(imap_account: ImapAccount, dovecot: Dovecot) -> None:
    assert count(*creds(imap_account), criteria=["ALL"]) == 0
    assert dovecot.message_count(imap_account.username) == 0


def test_bulk_append_and_count(imap_account: ImapAccount, dovecot: Dovecot) -> None:
    assert append_messages(*creds(imap_account), (make_message(i) for i in range(1200))) == 1200
    assert count(*creds(imap_account)) == 1200
    assert dovecot.message_count(imap_account.username, "unseen") == 1200


def test_idle_wakes_when_another_client_appends(imap_account: ImapAccount) -> None:
    watcher = login(imap_account)
    try:
        watcher.select_folder("INBOX")
        watcher.idle()
        appender = threading.Thread(
            target=append_messages, args=(*creds(imap_account), [make_message(1)]), daemon=True
        )
        appender.start()
        responses = watcher.idle_check(timeout=5)
        watcher.idle_done()
        appender.join(timeout=5)
    finally:
        watcher.logout()
    assert (1, b"EXISTS") in responses


def test_dovecot_restart_keeps_mail_and_uidvalidity(make_dovecot: Callable[..., Dovecot]) -> None:
    server = make_dovecot()
    account = server.account("incoming")
    append_messages(*creds(account), [make_message(i) for i in range(3)])
    before = uidvalidity(*creds(account))
    port = server.port

    server.restart()
    assert server.port == port
    assert count(*creds(account), criteria=["ALL"]) == 3
    assert uidvalidity(*creds(account)) == before

    server.kill()
    assert not port_is_open(port)
    server.start()
    assert count(*creds(account), criteria=["ALL"]) == 3


def test_uidvalidity_changes(imap_account: ImapAccount, dovecot: Dovecot) -> None:
    first = recreate_folder(*creds(imap_account), "Other")
    assert recreate_folder(*creds(imap_account), "Other") != first

    dovecot.set_uidvalidity(imap_account.username, 4242)
    assert uidvalidity(*creds(imap_account)) == 4242


def test_redis_restart_on_same_port(make_redis: Callable[..., RedisServer]) -> None:
    server = make_redis()
    url = server.url
    client = redis.Redis.from_url(url)
    client.set("k", "v")

    server.kill()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.restart()
    assert server.url == url
    assert client.ping()
    assert client.get("k") is None  # no persistence, by design
    client.close()


def test_redis_url_is_flushed(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.set("left-behind", 1)
    client.close()


def test_two_dovecots_at_once(make_dovecot: Callable[..., Dovecot]) -> None:
    one = make_dovecot()
    two = make_dovecot(users={"other": "pw"})
    assert one.port != two.port and one.base_dir != two.base_dir
    append_messages(*creds(one.account("incoming")), [make_message(1)])
    append_messages(*creds(two.account("other")), [make_message(2), make_message(3)])
    assert count(*creds(one.account("incoming"))) == 1
    assert count(*creds(two.account("other"))) == 2

    one.stop()
    assert count(*creds(two.account("other"))) == 2


def test_deliver_files_visible_over_imap(imap_account: ImapAccount, dovecot: Dovecot) -> None:
    delivered = dovecot.deliver_files(imap_account.username, (make_message(i) for i in range(500)))
    assert delivered == 500
    assert count(*creds(imap_account)) == 500

    client = login(imap_account)
    try:
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["ALL"])
        assert uids == list(range(1, 501))
        envelope = client.fetch([uids[0]], [b"ENVELOPE"])[uids[0]][b"ENVELOPE"]
    finally:
        client.logout()
    assert envelope.message_id.startswith(b"<msg-")


def test_imaps_listener(make_dovecot: Callable[..., Dovecot], tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))

    server = make_dovecot(tls=TLSFiles(cert=cert_path, key=key_path))
    assert server.imaps_port is not None
    context = ssl.create_default_context()
    ca.configure_trust(context)
    client = IMAPClient("127.0.0.1", port=server.imaps_port, ssl=True, ssl_context=context, timeout=10)
    try:
        client.login("incoming", "secret")
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
    finally:
        client.logout()


def test_a_user_added_after_a_parent_lost_its_search_bit_can_log_in(
    make_dovecot: Callable[..., Dovecot],
) -> None:
    """Another pytest session starting on the machine resets /tmp/pytest-of-<user> to 0700: Dovecot's auth
    process could not stat the new user's passwd file ('Temporary authentication failure')."""
    server = make_dovecot()
    parent = server.workdir.parent
    mode = parent.stat().st_mode
    parent.chmod(0o700)  # what a concurrent session does to its pytest-of-<user> ancestor
    try:
        account = server.add_user("latecomer", "secret")
        with IMAPClient(account.host, port=account.port, ssl=False, timeout=10) as client:
            client.login(account.username, account.password)
    finally:
        parent.chmod(mode & 0o7777)
