"""The webhook receiver under uvicorn against the real Redis: signed events reach the suppression list
(seen through the API and the CLI), every unverified call gets an empty 404 and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from prometheus_client import REGISTRY

from devstack.ports import free_port, port_is_open
from mailroom.cli import cli
from mailroom.config import ProviderConfig
from mailroom.provider.suppression import SuppressionList
from mailroom.provider.webhooks import SigningKeyFile, create_app, sign
from tests.provider_servers import serve_asgi
from tests.support import wait_for

pytestmark = pytest.mark.integration

KEY = "whsec-test-0123456789"
PATH = "/mailgun/webhooks"


def post(url: str, data: bytes, method: str = "POST") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


_tokens = iter(range(10**9))


def signed(
    event: dict[str, Any], *, key: str = KEY, timestamp: int | None = None, token: str | None = None
) -> bytes:
    ts = int(time.time()) if timestamp is None else timestamp
    tok = token or f"token-{os.getpid()}-{next(_tokens)}-{time.monotonic_ns()}"
    return json.dumps(
        {
            "signature": {"timestamp": str(ts), "token": tok, "signature": sign(key, ts, tok)},
            "event-data": event,
        }
    ).encode()


def failed(recipient: str, severity: str = "permanent", event_id: str = "ev-1") -> dict[str, Any]:
    return {
        "id": event_id,
        "event": "failed",
        "severity": severity,
        "recipient": recipient,
        "envelope": {"sender": "postmaster@mg.example.org"},
        "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist"},
        "timestamp": time.time(),
    }


@pytest.fixture
def webhook(redis_url: str) -> Iterator[str]:
    config = ProviderConfig(signing_key=KEY, max_body_bytes=4096)  # type: ignore[arg-type]
    app = create_app(config, redis.Redis.from_url(redis_url), KEY)
    with serve_asgi(app) as base:
        yield base + PATH


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("mailroom_provider_webhook_rejected_total", {"reason": reason}) or 0.0


def test_permanent_failure_is_suppressed_and_visible_in_api_and_cli(
    webhook: str, redis_url: str, tmp_path: Path
) -> None:
    status, content = post(webhook, signed(failed("Gone.User@Example.ORG")))
    assert (status, content) == (200, b"")

    record = SuppressionList.from_url(redis_url).get(
        "gone.user@example.org".replace("gone.user", "Gone.User")
    )
    assert record is not None
    assert (record.address, record.reason, record.code, record.source) == (
        "Gone.User@example.org", "bounce", "550", "mailgun",
    )  # fmt: skip
    assert "does not exist" in (record.message or "")
    assert SuppressionList.from_url(redis_url).is_suppressed("  Gone.User@EXAMPLE.org ")
    assert not SuppressionList.from_url(redis_url).is_suppressed("gone.user@example.org")  # local part kept

    config = tmp_path / "mailroom.yml"
    config.write_text(f"redis_url: {redis_url}\n")
    runner = CliRunner()
    shown = runner.invoke(
        cli, ["--config", str(config), "suppressions", "show", "Gone.User@example.org", "--json"]
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["reason"] == "bounce"
    listed = runner.invoke(cli, ["--config", str(config), "suppressions", "list", "--json"])
    assert [r["address"] for r in json.loads(listed.stdout)] == ["Gone.User@example.org"]
    removed = runner.invoke(cli, ["--config", str(config), "suppressions", "remove", "Gone.User@example.org"])
    assert removed.exit_code == 0
    assert not SuppressionList.from_url(redis_url).is_suppressed("Gone.User@example.org")
    again = runner.invoke(cli, ["--config", str(config), "suppressions", "show", "Gone.User@example.org"])
    assert again.exit_code == 1


def big_body() -> bytes:
    event = failed("big@example.org")
    event["padding"] = "x" * 8000
    return signed(event)


UNVERIFIED = {
    "bad_signature": lambda: signed(failed("a@example.org"), key="wrong-key"),
    "missing_signature": lambda: json.dumps({"event-data": failed("a@example.org")}).encode(),
    "malformed": lambda: b"{not json",
    "stale_timestamp": lambda: signed(failed("a@example.org"), timestamp=int(time.time()) - 16 * 60),
    "future_timestamp": lambda: signed(failed("a@example.org"), timestamp=int(time.time()) + 16 * 60),
    "too_large": big_body,
}


@pytest.mark.parametrize("variant", sorted(UNVERIFIED))
def test_unverified_calls_get_an_empty_404_and_change_nothing(
    webhook: str, redis_url: str, variant: str
) -> None:
    reason = "stale_timestamp" if variant == "future_timestamp" else variant
    before = rejected(reason)
    status, content = post(webhook, UNVERIFIED[variant]())
    assert (status, content) == (404, b"")
    assert rejected(reason) == before + 1
    assert SuppressionList.from_url(redis_url).count() == 0


def test_replayed_call_is_refused(webhook: str, redis_url: str) -> None:
    body = signed(failed("once@example.org"))
    assert post(webhook, body)[0] == 200
    suppressions = SuppressionList.from_url(redis_url)
    assert suppressions.unsuppress("once@example.org")
    before = rejected("replay")
    assert post(webhook, body) == (404, b"")
    assert rejected("replay") == before + 1
    assert not suppressions.is_suppressed("once@example.org")


def test_other_methods_and_paths_are_404(webhook: str) -> None:
    assert post(webhook, b"", method="GET") == (404, b"")
    assert post(webhook.replace(PATH, "/elsewhere"), signed({"event": "delivered"})) == (404, b"")
    # no redirect to the real path either (Starlette's default for a trailing slash)
    assert post(webhook + "/", signed({"event": "delivered"})) == (404, b"")


def test_unknown_and_other_events_are_accepted_and_ignored(webhook: str, redis_url: str) -> None:
    for event in ({"event": "delivered", "recipient": "a@example.org"}, {"event": "new-kind"}, {}):
        assert post(webhook, signed(event)) == (200, b"")
    assert SuppressionList.from_url(redis_url).count() == 0


@pytest.mark.parametrize(("kind", "reason"), [("complained", "complaint"), ("unsubscribed", "unsubscribe")])
def test_complaints_and_unsubscribes_suppress(webhook: str, redis_url: str, kind: str, reason: str) -> None:
    assert post(webhook, signed({"event": kind, "recipient": "c@example.org"}))[0] == 200
    record = SuppressionList.from_url(redis_url).get("c@example.org")
    assert record is not None and record.reason == reason


def test_temporary_failures_suppress_at_the_threshold(webhook: str, redis_url: str) -> None:
    suppressions = SuppressionList.from_url(redis_url)
    # The provider retrying one event (same id, new token) counts once.
    for _ in range(3):
        assert post(webhook, signed(failed("slow@example.org", "temporary", "ev-same")))[0] == 200
    for n in range(2, 5):
        assert post(webhook, signed(failed("slow@example.org", "temporary", f"ev-{n}")))[0] == 200
    assert not suppressions.is_suppressed("slow@example.org")  # 4 distinct failures
    assert post(webhook, signed(failed("slow@example.org", "temporary", "ev-5")))[0] == 200
    record = suppressions.get("slow@example.org")
    assert record is not None and record.reason == "temporary_failures"


def test_rotated_key_file_is_followed_without_restart(redis_url: str, tmp_path: Path) -> None:
    """A Kubernetes Secret rotated in place rewrites the key file under the running receiver: calls signed
    with the new key are then accepted, and calls signed with the old one get 404."""
    key_file = tmp_path / "signing-key"
    key_file.write_text(KEY + "\n")
    config = ProviderConfig(signing_key_file=key_file, max_body_bytes=4096)
    keys = SigningKeyFile(key_file, check_interval=0.0)  # every call checks, so the test need not sleep
    app = create_app(config, redis.Redis.from_url(redis_url), keys)
    rotated = "whsec-rotated-9876543210"
    with serve_asgi(app) as base:
        assert post(base + PATH, signed({"event": "delivered"})) == (200, b"")
        assert post(base + PATH, signed({"event": "delivered"}, key=rotated)) == (404, b"")
        key_file.write_text(rotated + "\n")
        assert post(base + PATH, signed(failed("new-key@example.org"), key=rotated)) == (200, b"")
        before = rejected("bad_signature")
        assert post(base + PATH, signed(failed("old-key@example.org"))) == (404, b"")
        assert rejected("bad_signature") == before + 1
    suppressions = SuppressionList.from_url(redis_url)
    assert suppressions.is_suppressed("new-key@example.org")
    assert not suppressions.is_suppressed("old-key@example.org")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_mailroom_webhooks_command(redis_url: str, tmp_path: Path) -> None:
    """The real command: `mailroom webhooks` as a process, a signed call, then the CLI sees it; a
    rewritten key file is followed."""
    key_file = tmp_path / "signing-key"
    key_file.write_text(KEY + "\n")
    port = free_port()
    config = tmp_path / "mailroom.yml"
    config.write_text(
        f"redis_url: {redis_url}\nprovider:\n  signing_key_file: {key_file}\n  webhook_port: {port}\n"
        "  webhook_path: /hooks/mg\n"
    )
    env = {**os.environ, "MAILROOM_CONFIG": str(config)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailroom", "webhooks"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        started = time.monotonic()
        wait_for(lambda: port_is_open(port) or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        print(f"mailroom webhooks listening after {time.monotonic() - started:.2f} s")
        url = f"http://127.0.0.1:{port}/hooks/mg"
        assert post(url, signed(failed("cli@example.org"))) == (200, b"")
        assert post(url, signed(failed("x@example.org"), key="nope")) == (404, b"")
        key_file.write_text("whsec-rotated-key\n")  # the command follows the file: no restart
        wait_for(lambda: post(url, signed({"event": "delivered"}, key="whsec-rotated-key"))[0] == 200, 10)
        assert post(url, signed(failed("y@example.org"))) == (404, b"")
        listed = subprocess.run(
            [sys.executable, "-m", "mailroom", "suppressions", "list"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert listed.stdout.startswith("cli@example.org\tbounce\t550\t")
        assert "x@example.org" not in listed.stdout
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_down_answers_503_and_the_retry_is_accepted_later(make_redis):
    """Mailgun retries a call that did not get 2xx: with Redis away the call must not be lost by having
    its token remembered as seen, so the retried call (same token) is processed once Redis is back."""
    private = make_redis()
    config = ProviderConfig(signing_key=KEY, max_body_bytes=4096)  # type: ignore[arg-type]
    app = create_app(config, redis.Redis.from_url(private.url, socket_timeout=2), KEY)
    body = signed(failed("gone@example.com"), token="retried-token-1")
    with serve_asgi(app) as base:
        private.stop()
        assert post(base + PATH, body) == (503, b"")
        private.start()
        status, _ = post(base + PATH, body)
        assert status == 200
        assert SuppressionList(redis.Redis.from_url(private.url)).is_suppressed("gone@example.com")
        status, _ = post(base + PATH, body)
        assert status == 404  # now it is a replay
