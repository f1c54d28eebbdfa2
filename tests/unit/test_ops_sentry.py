"""The Sentry scrubber as a pure function, and through a real sentry_sdk client with a capturing transport."""

from __future__ import annotations

import base64
import json

import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from mailroom import sentry
from mailroom.config import Settings

PASSWORD = "imap-pa55word-XYZ"
RAW = b"From: a@example.org\r\nSubject: secret plans\r\n\r\nthe body nobody may see\r\n"


def _event() -> dict:
    payload = {
        "v": 1,
        "mailbox": "support",
        "key": "abc123",
        "message_id": "<m1@example.org>",
        "raw": base64.b64encode(RAW).decode(),
    }
    return {
        "message": f"login failed for {PASSWORD} at redis://user:{PASSWORD}@redis:6379/0",
        "extra": {
            "rq-job": {"job_id": "support-1-7", "args": [payload], "kwargs": {}},
            "headers": {"Authorization": "Bearer t0ken-abc", "X-Other": "fine"},
        },
        "contexts": {"cfg": {"password_file": "/run/secrets/imap", "body": "text", "raw_bytes": b"x"}},
    }


def test_scrub_removes_raw_message_secret_fields_and_known_values() -> None:
    event = sentry.scrub(sentry.tag_job(_event()), [PASSWORD])
    text = json.dumps(event, default=str)
    assert PASSWORD not in text
    assert base64.b64encode(RAW).decode() not in text and "nobody may see" not in text
    assert "t0ken-abc" not in text
    assert event["extra"]["rq-job"]["args"][0]["raw"] == sentry.FILTERED
    assert event["extra"]["headers"]["X-Other"] == "fine"
    assert "redis://user:[Filtered]@redis" in event["message"]
    assert event["tags"] == {
        "mailbox": "support",
        "reply_key": "abc123",
        "message_id": "<m1@example.org>",
        "job_id": "support-1-7",
    }


def test_scrub_leaves_an_ordinary_event_alone() -> None:
    event = {"message": "handler_failed", "level": "error", "tags": {"mailbox": "support"}}
    assert sentry.scrub(event, ["unrelated-secret"]) == event


class Capture(Transport):
    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


def test_a_real_client_sends_nothing_secret(tmp_path, monkeypatch) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(PASSWORD + "\n")
    settings = Settings(
        mailboxes=[
            {"name": "support", "host": "imap.example.org", "username": "u", "password_file": secret_file}
        ],
        sentry_dsn="https://public@o0.ingest.sentry.io/1",
    )
    transport = Capture()
    assert sentry.init(settings, "test", transport=transport)
    try:
        with sentry_sdk.new_scope() as scope:
            scope.set_extra("rq-job", _event()["extra"]["rq-job"])
            try:
                raw_message = RAW  # noqa: F841 - a local holding the message: locals are never sent
                raise RuntimeError(f"cannot log in with {PASSWORD}")
            except RuntimeError:
                sentry_sdk.capture_exception()
        sentry_sdk.flush()
    finally:
        sentry_sdk.init(dsn=None)
    items = [item for envelope in transport.envelopes for item in envelope.items]
    events = [json.loads(item.payload.get_bytes()) for item in items if item.type == "event"]
    assert len(events) == 1
    text = json.dumps(events[0])
    assert (
        PASSWORD not in text and "nobody may see" not in text and base64.b64encode(RAW).decode() not in text
    )
    assert events[0]["tags"]["reply_key"] == "abc123"
    assert events[0]["tags"]["component"] == "test"
    assert "cannot log in with [Filtered]" in text
