"""ImapSession.fetch on a real Dovecot: every pending message once, byte for byte, in chunks that respect
the byte budget, and a message over max_message_size as its header only."""

from __future__ import annotations

import pytest

from devstack import append_messages
from mailroom.config import ImapMailbox
from mailroom.imap.session import ImapSession
from tests.support import mailbox_config

pytestmark = pytest.mark.integration


def message(i: int, body_size: int) -> bytes:
    header = f"From: a@example.org\r\nTo: incoming+k{i}@example.com\r\nMessage-ID: <m{i}@example.org>\r\n\r\n"
    line = b'0123456789abcdefghijklmnopqrstuvwxyz{5}()"\\ \xc3\xa9\r\n'  # literal-like and 8-bit text
    return header.encode() + (line * (body_size // len(line) + 1))[:body_size]


def test_fetch_keeps_to_the_budget_and_truncates_only_what_is_too_big(imap_account):
    sizes = [100, 40_000, 300, 90_000, 25_000, 25_000, 200, 300_000, 10]
    sent = [message(i, size) for i, size in enumerate(sizes)]
    append_messages(imap_account.host, imap_account.port, imap_account.username, imap_account.password, sent)
    config = ImapMailbox.model_validate(mailbox_config(imap_account))
    session = ImapSession.open(config)
    try:
        uids = session.pending_uids()
        batches = list(session.fetch(uids, batch_size=4, max_size=200_000, max_batch_bytes=60_000))
    finally:
        session.close()

    got = [m for batch in batches for m in batch]
    assert sorted(m.ref for m in got) == uids  # each message exactly once
    by_uid = dict(zip(uids, sent, strict=True))
    for m in got:
        original = by_uid[m.ref]
        if len(original) > 200_000:
            assert m.truncated and m.size == len(original)
            assert original.startswith(m.raw) and m.raw.endswith(b"\r\n\r\n")  # the header, whole
        else:
            assert not m.truncated and m.raw == original and m.received_at is not None
    for batch in batches:
        assert len(batch) == 1 or sum(m.size for m in batch) <= 60_000, [m.size for m in batch]
        assert len(batch) <= 4
