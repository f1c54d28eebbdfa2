"""examples/notes_app.py: the reply -> note example handler, fed IncomingEmail values (no servers)."""

from __future__ import annotations

import pytest

from examples.notes_app import NotesApp, strip_quoted
from mailroom.keys import AddressTemplate
from mailroom.message import parse_message
from mailroom.schema import JobPayload
from workers.errors import PermanentHandlerError
from workers.incoming import IncomingEmail

TEMPLATE = AddressTemplate.parse("incoming+%{key}@example.com")


def reply(
    key: str = "k1",
    body: str = "Looks good to me.\n\nOn Mon, App wrote:\n> Build #42 failed.\n> details\n",
    headers: str = "",
    message_id: str = "m1@mail.example.org",
) -> IncomingEmail:
    raw = (
        f"From: Alice <alice@example.org>\r\nTo: incoming+{key}@example.com\r\nSubject: Re: hi\r\n"
        f"Message-ID: <{message_id}>\r\n{headers}Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + body.replace("\n", "\r\n")
    ).encode()
    parsed = parse_message(raw, TEMPLATE)
    payload = JobPayload(
        mailbox="support",
        source="imap",
        uidvalidity=1,
        uid=1,
        received_at="2026-01-01T00:00:00+00:00",
        size=len(raw),
        truncated=False,
        message_id=parsed.message_id,
        key=parsed.key,
        key_header=parsed.key_header,
        from_address=parsed.from_address,
        subject=parsed.subject,
        auto_reply=parsed.auto_reply,
        bounce=parsed.bounce,
        parse_error=parsed.parse_error,
        raw=raw,
    )
    # Through the JSON form, as the worker receives it.
    return IncomingEmail(JobPayload.from_json(payload.to_json()))


@pytest.fixture
def app() -> NotesApp:
    notes = NotesApp()
    notes.notify("k1", "Build #42 failed")
    return notes


def test_reply_becomes_a_note_without_quoted_lines(app: NotesApp) -> None:
    note_id = app.handle(reply())
    (note,) = app.notes("k1")
    assert note.id == note_id
    assert note.body == "Looks good to me."
    assert note.author == "alice@example.org"


def test_redelivery_adds_no_second_note(app: NotesApp) -> None:
    first = app.handle(reply())
    assert app.handle(reply()) == first
    assert len(app.notes("k1")) == 1
    app.handle(reply(message_id="m2@mail.example.org", body="Second thought."))
    assert [n.body for n in app.notes("k1")] == ["Looks good to me.", "Second thought."]


@pytest.mark.parametrize(
    "headers",
    ["Auto-Submitted: auto-replied\r\n", "X-Autoreply: yes\r\n", "Precedence: bulk\r\n"],
)
def test_auto_replies_are_ignored(app: NotesApp, headers: str) -> None:
    email = reply(headers=headers)
    assert email.auto_reply
    assert app.handle(email) is None
    assert app.notes("k1") == []


def test_unknown_key_is_permanent(app: NotesApp) -> None:
    with pytest.raises(PermanentHandlerError, match="unknown reply key 'nope'"):
        app.handle(reply(key="nope"))


def test_missing_key_is_permanent(app: NotesApp) -> None:
    no_key = IncomingEmail(JobPayload.from_json({**reply().payload.to_json(), "key": None}))
    with pytest.raises(PermanentHandlerError, match="no reply key"):
        app.handle(no_key)


def test_only_quoted_text_is_permanent(app: NotesApp) -> None:
    with pytest.raises(PermanentHandlerError, match="no text"):
        app.handle(reply(body="> just quoting\n"))


def test_module_entry_point_is_seeded() -> None:
    from examples import notes_app

    assert notes_app.handle(reply(key="demo-key-123", message_id="seed@x")) is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.\n> no\n", "Yes."),
        ("Yes.\n\nOn Tue, Bob <b@x> wrote:\n> q\n>> qq\n", "Yes."),
        ("  > indented quote\nTop\n", "Top"),
        ("", ""),
    ],
)
def test_strip_quoted(text: str, expected: str) -> None:
    assert strip_quoted(text) == expected
