"""Test-side IMAP helpers over imapclient: plain TCP on loopback, one connection per call."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from email.utils import formatdate
from typing import Any

from imapclient import IMAPClient

# MULTIAPPEND sends many messages in one command; chunks keep each command's size bounded.
APPEND_CHUNK = 500


@contextmanager
def connect(host: str, port: int, user: str, password: str) -> Iterator[Any]:
    """A logged-in IMAPClient (plain TCP), logged out on exit."""
    client = IMAPClient(host, port=port, ssl=False, timeout=30)
    try:
        client.login(user, password)
        yield client
    finally:
        try:
            client.logout()
        except Exception:  # noqa: BLE001 - the connection may already be gone; nothing to do
            client.shutdown()


def make_message(
    i: int,
    *,
    to: str | None = None,
    subject: str | None = None,
    size: int | None = None,
    sender: str = "sender@example.com",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A small valid RFC 5322 message with a unique ``<msg-{i}-{uuid}@test.example>`` Message-ID.

    ``size`` pads the body with plain ASCII lines until the message is at least that many bytes.
    """
    to = to if to is not None else f"incoming+key{i}@example.com"
    subject = subject if subject is not None else f"Test message {i}"
    lines = [
        f"From: Sender <{sender}>",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: <msg-{i}-{uuid.uuid4().hex}@test.example>",
        *(f"{name}: {value}" for name, value in headers),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 7bit",
        "",
        f"Body of test message {i}.",
    ]
    raw = "\r\n".join(lines) + "\r\n"
    if size is not None and len(raw) < size:
        filler = "x" * 76 + "\r\n"
        missing = size - len(raw)
        raw += filler * (missing // len(filler) + 1)
    return raw.encode("ascii")


def append_messages(
    host: str, port: int, user: str, password: str, messages: Iterable[bytes], folder: str = "INBOX"
) -> int:
    """APPEND messages over one connection (MULTIAPPEND when offered); returns how many."""
    total = 0
    with connect(host, port, user, password) as client:
        multi = b"MULTIAPPEND" in client.capabilities()
        iterator = iter(messages)
        while chunk := list(itertools.islice(iterator, APPEND_CHUNK)):
            if multi:
                client.multiappend(folder, chunk)
            else:
                for raw in chunk:
                    client.append(folder, raw)
            total += len(chunk)
    return total


def count(
    host: str,
    port: int,
    user: str,
    password: str,
    criteria: Sequence[str] | str = ("UNSEEN",),
    folder: str = "INBOX",
) -> int:
    """Number of messages in ``folder`` matching an IMAP SEARCH (read-only select)."""
    with connect(host, port, user, password) as client:
        client.select_folder(folder, readonly=True)
        return len(client.search(list(criteria) if not isinstance(criteria, str) else criteria))


def uidvalidity(host: str, port: int, user: str, password: str, folder: str = "INBOX") -> int:
    with connect(host, port, user, password) as client:
        status = client.folder_status(folder, [b"UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])


def recreate_folder(host: str, port: int, user: str, password: str, folder: str) -> int:
    """DELETE and CREATE ``folder`` (dropping its mail) so it gets a new UIDVALIDITY; returns it.

    IMAP cannot delete INBOX; for that use ``Dovecot.set_uidvalidity``.
    """
    if folder.upper() == "INBOX":
        raise ValueError("INBOX cannot be deleted over IMAP; use Dovecot.set_uidvalidity()")
    with connect(host, port, user, password) as client:
        if client.folder_exists(folder):
            client.delete_folder(folder)
        client.create_folder(folder)
        status = client.folder_status(folder, [b"UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])
