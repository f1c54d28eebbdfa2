"""logs.info_many renders the watcher's per-message lines itself, a batch at a time: they must be the
lines structlog's configured chain writes for the same events, timestamps aside."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from mailroom import logs

EVENTS = [
    ("message_enqueued", {"uid": 7, "message_id": "m@x", "reply_key": "k", "parse_error": None, "ok": True}),
    ("message_already_queued", {"uid": 8, "subject": "Grüße \u2603", "password": "hunter2", "n": 1.5}),
]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_batch_lines_are_the_lines_structlog_writes(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json")
    log = structlog.get_logger("mailroom").bind(mailbox="support")
    for name, fields in EVENTS:
        log.info(name, **fields)
    logs.info_many({"mailbox": "support"}, EVENTS)
    written = lines(capsys.readouterr().out)
    assert len(written) == 4
    one_by_one, batched = written[:2], written[2:]
    for slow, fast in zip(one_by_one, batched, strict=True):
        assert str(slow.pop("timestamp"))[:16] == str(fast.pop("timestamp"))[:16]
        assert list(slow.items()) == list(fast.items())  # same keys, same order, same values
    assert batched[1]["password"] == "[redacted]"


def test_below_info_nothing_is_written(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", level="warning")
    logs.info_many({"mailbox": "support"}, EVENTS)
    assert capsys.readouterr().out == ""


def test_console_format_goes_through_structlog(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("console")
    logs.info_many({"mailbox": "support"}, EVENTS)
    text = capsys.readouterr().out
    assert "message_enqueued" in text and "hunter2" not in text and not text.startswith("{")


def test_library_records_are_json_lines_in_json_mode(capsys):
    import logging

    from mailroom import logs

    logs.configure("json", "info")
    try:
        logging.getLogger("rq.worker").info("Worker %s: \x1b[32mstarted\x1b[39;49;00m", "w1")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("rq.worker").error("failed", exc_info=True)
        out = capsys.readouterr().out.splitlines()
        first, second = (json.loads(line) for line in out[-2:])
        assert first["event"] == "Worker w1: started" and first["logger"] == "rq.worker"
        assert second["level"] == "error" and "RuntimeError: boom" in second["exception"]
    finally:
        logs.configure("console", "info")


@pytest.mark.parametrize("level", ["debug", "info"])
def test_httpx_request_lines_are_off_whatever_the_level(capsys, level):
    """httpx logs each request with its URL at INFO; a webhook URL may carry a token in its query."""
    import logging

    logs.configure("json", level)
    try:
        logging.getLogger("httpx").info('HTTP Request: POST https://app/in?private_token=s3cret "200 OK"')
        assert "s3cret" not in capsys.readouterr().out
    finally:
        logs.configure("console", "info")
