"""A tiny application handler: a reply to a notification becomes a note on the thing it was about.

The application sent a notification from ``incoming+KEY@example.com`` (and as ``Message-ID:
<reply-KEY@app>``) and remembered KEY in its ``notifications`` table. When someone replies, mailroom
finds KEY in the reply and a worker calls ``handle(email)``, which:

* ignores auto-replies and bounces (an out-of-office must not become a note): returns without action;
* raises PermanentHandlerError for a missing or unknown key: retrying cannot fix it, so the message goes
  to RQ's failed registry with its raw bytes, where an operator can look at it;
* otherwise stores the reply's text, without the quoted lines (``> ...``), as a note. A note is stored
  once per Message-ID, so a redelivered job does not add it twice.

Configure a mailbox with ``handler: examples.notes_app:handle``. The database is SQLite: in memory by
default (seeded with one notification, key ``demo-key-123``), or the file named by ``$NOTES_DB``. An RQ
worker runs each job in a forked process, so only a file keeps notes from one job to the next.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass

from mailroom import IncomingEmail, PermanentHandlerError

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    reply_key TEXT PRIMARY KEY,
    subject   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notes (
    id         INTEGER PRIMARY KEY,
    reply_key  TEXT NOT NULL REFERENCES notifications (reply_key),
    author     TEXT,
    body       TEXT NOT NULL,
    message_id TEXT UNIQUE
);
"""


@dataclass(frozen=True)
class Note:
    id: int
    reply_key: str
    author: str | None
    body: str


def strip_quoted(text: str) -> str:
    """The reply's own words: no ``>`` quoted lines, no "On ... wrote:" line introducing them."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith(">")]
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and lines[-1].rstrip().endswith("wrote:"):
        lines.pop()
    return "\n".join(lines).strip()


class NotesApp:
    def __init__(self, path: str = ":memory:") -> None:
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.executescript(SCHEMA)

    def notify(self, reply_key: str, subject: str) -> None:
        """What the application does when it sends a notification: remember the key it put in the address."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO notifications (reply_key, subject) VALUES (?, ?)",
                (reply_key, subject),
            )

    def notes(self, reply_key: str) -> list[Note]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, reply_key, author, body FROM notes WHERE reply_key = ? ORDER BY id", (reply_key,)
            ).fetchall()
        return [Note(*row) for row in rows]

    def handle(self, email: IncomingEmail) -> int | None:
        """Add the reply as a note; returns the note's id (None when the message was ignored)."""
        if email.auto_reply or email.bounce:
            return None
        if not email.key:
            raise PermanentHandlerError("no reply key in the message")
        with self._lock:
            known = self._db.execute(
                "SELECT 1 FROM notifications WHERE reply_key = ?", (email.key,)
            ).fetchone()
        if known is None:
            raise PermanentHandlerError(f"unknown reply key {email.key!r}")
        text = strip_quoted(email.body.text or "")
        if not text:
            raise PermanentHandlerError("the reply has no text of its own")
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO notes (reply_key, author, body, message_id) VALUES (?, ?, ?, ?)",
                (email.key, email.from_address, text, email.message_id),
            )
            if cursor.rowcount == 1 and cursor.lastrowid is not None:
                return cursor.lastrowid
            # Already stored under this Message-ID: a redelivery, not a second note.
            (note_id,) = self._db.execute(
                "SELECT id FROM notes WHERE message_id = ?", (email.message_id,)
            ).fetchone()
        return int(note_id)


app = NotesApp(os.environ.get("NOTES_DB", ":memory:"))
app.notify("demo-key-123", "Build #42 failed")


def handle(email: IncomingEmail) -> int | None:
    """The entry point a mailbox names: ``handler: examples.notes_app:handle``."""
    return app.handle(email)
