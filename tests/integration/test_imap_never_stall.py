"""What real servers do that must not stall a mailbox or touch others' mail, on real Dovecot (behind a test
proxy where Dovecot cannot be configured as the server in question): UID EXPUNGE of exactly the delivered
UIDs, a missing move target refused at connect instead of a fetch-enqueue-fail loop, parking on a server
without custom keywords, a bounded header for an oversized message without a blank line, TCP_NODELAY."""

from __future__ import annotations

import base64
import socket
import time

import pytest

from devstack import append_messages, count, make_message
from devstack.mailbox import connect
from mailroom.check import Outcome, check_mailbox
from mailroom.config import ImapMailbox
from mailroom.imap.session import ImapSession
from tests.imapproxy import ImapProxy
from tests.support import mailbox_config, queue, use_config, wait_for, watching, write_config

pytestmark = pytest.mark.integration


def _imap(account):
    return (account.host, account.port, account.username, account.password)


def _via(proxy: ImapProxy, account, **overrides):
    return mailbox_config(account, host=proxy.host, port=proxy.port, **overrides)


def _flag_deleted_by_another_client(account) -> int:
    """Another client's message, flagged \\Deleted (its undo window) but not expunged; returns its UID."""
    append_messages(*_imap(account), [make_message(900, to="someone@example.com")])
    with connect(*_imap(account)) as client:
        client.select_folder("INBOX")
        uid = max(client.search(["ALL"]))
        client.add_flags([uid], [b"\\Deleted"])
    return int(uid)


@pytest.mark.parametrize(
    ("hide", "after_delivery"),
    [
        (frozenset(), "delete"),  # Dovecot as it is: UIDPLUS and MOVE
        (frozenset({b"UIDPLUS", b"MOVE"}), "delete"),
        (frozenset({b"UIDPLUS", b"MOVE"}), "move:Archive"),
    ],
    ids=["uidplus", "no-uidplus-delete", "no-uidplus-move"],
)
def test_delivery_never_expunges_another_clients_deleted_message(
    dovecot, imap_account, redis_url, tmp_path, monkeypatch, hide, after_delivery
):
    with connect(*_imap(imap_account)) as client:
        client.create_folder("Archive")
    theirs = _flag_deleted_by_another_client(imap_account)
    with ImapProxy(dovecot.host, dovecot.port, hide=hide) as proxy:
        box = _via(proxy, imap_account, after_delivery=after_delivery)
        settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, box))
        with watching(settings):
            append_messages(*_imap(imap_account), [make_message(i) for i in range(3)])
            wait_for(lambda: len(queue(redis_url)) == 3)
            wait_for(lambda: count(*_imap(imap_account), criteria=["UNDELETED"]) == 0)
            time.sleep(0.5)
        assert proxy.commands["EXPUNGE"] == 0  # never the folder-wide EXPUNGE
    with connect(*_imap(imap_account)) as client:
        client.select_folder("INBOX", readonly=True)
        assert theirs in client.search(["DELETED"])  # still there, still theirs to undelete
    if after_delivery.startswith("move"):
        assert count(*_imap(imap_account), criteria="ALL", folder="Archive") == 3


def test_missing_move_folder_is_refused_at_connect_not_a_hot_loop(
    dovecot, imap_account, redis_url, tmp_path, monkeypatch
):
    """Before: every batch was fetched and enqueued, the MOVE failed, and the batch came round again."""
    box = mailbox_config(imap_account, after_delivery="move:Archive")
    config = ImapMailbox.model_validate(box)
    lines = {r.name: r for r in check_mailbox(config)}
    assert lines["support: after_delivery"].outcome is Outcome.FAIL
    assert "'Archive' does not exist" in lines["support: after_delivery"].detail

    append_messages(*_imap(imap_account), [make_message(i) for i in range(3)])
    settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, box))
    with ImapProxy(dovecot.host, dovecot.port) as proxy:
        box = _via(proxy, imap_account, after_delivery="move:Archive")
        settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, box))
        with watching(settings) as running:
            watcher = running.current()[0]
            wait_for(lambda: "Archive" in (watcher.status.last_error or ""))
            time.sleep(2)
            assert proxy.commands["UID FETCH"] == 0 and len(queue(redis_url)) == 0
            assert proxy.commands["LOGIN"] <= 3  # backing off, not reconnecting in a loop
            with connect(*_imap(imap_account)) as client:
                client.create_folder("Archive")
            wait_for(lambda: count(*_imap(imap_account), criteria="ALL", folder="Archive") == 3, timeout=30)
    assert len(queue(redis_url)) == 3
    lines = {r.name: r for r in check_mailbox(config)}
    assert lines["support: after_delivery"].outcome is Outcome.OK


def test_parking_ends_catch_up_on_a_server_without_custom_keywords(
    dovecot, imap_account, redis_url, tmp_path, monkeypatch
):
    """PERMANENTFLAGS without \\*: $MailroomParked cannot be kept, so with delete the oversized message
    stays in every SEARCH. Before: catch-up fetched its header again and again and never reached IDLE."""
    limit = 20_000
    with ImapProxy(dovecot.host, dovecot.port, no_custom_keywords=True) as proxy:
        box = _via(proxy, imap_account, max_message_size=limit, after_delivery="delete")
        settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, box))
        with watching(settings):
            append_messages(*_imap(imap_account), [make_message(1, size=5 * limit), make_message(2)])
            wait_for(lambda: count(*_imap(imap_account), criteria="ALL") == 1)  # the small one deleted
            wait_for(lambda: proxy.commands["IDLE"] >= 1, timeout=10)
            fetches = proxy.commands["UID FETCH"]
            time.sleep(1)
            assert proxy.commands["UID FETCH"] == fetches  # quiet: nothing fetched again
        assert proxy.commands["UID FETCH"] <= 4
    assert len(queue(redis_url)) == 2
    with connect(*_imap(imap_account)) as client:
        client.select_folder("INBOX", readonly=True)
        assert client.search(["KEYWORD", "$MailroomParked"]) == []  # the proxy kept it from the server
        assert len(client.search(["SEEN"])) == 1  # parked: \Seen, left in place


def test_oversized_message_without_a_blank_line_is_queued_with_a_bounded_header(
    imap_account, redis_url, tmp_path, monkeypatch
):
    """All header to the server: BODY.PEEK[HEADER] of it was all 6.3 MB, downloaded and queued whole."""
    limit = 1024 * 1024
    line = b"X-Filler: " + b"y" * 100 + b"\r\n"
    raw = b"From: a@example.org\r\nTo: incoming+big@example.com\r\n" + line * (6_300_000 // len(line))
    assert b"\r\n\r\n" not in raw and len(raw) > 6_000_000
    box = mailbox_config(imap_account, max_message_size=limit)
    settings = use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, box))
    with watching(settings):
        append_messages(*_imap(imap_account), [raw])
        wait_for(lambda: len(queue(redis_url)) == 1, timeout=30)
    payload = queue(redis_url).jobs[0].args[0]
    kept = base64.b64decode(payload["raw"])
    assert payload["truncated"] and payload["size"] == len(raw) and payload["key"] == "big"
    assert len(kept) <= limit and raw.startswith(kept)


def test_imap_socket_has_tcp_nodelay(imap_account):
    session = ImapSession.open(ImapMailbox.model_validate(mailbox_config(imap_account)))
    try:
        assert session._client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        session.close()
