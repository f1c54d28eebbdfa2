"""OAuth2 IMAP logins against a real Dovecot whose oauth2 passdb asks a local introspection endpoint
(tests/oauthserver.py), with tokens from a local token endpoint: XOAUTH2 and OAUTHBEARER, a token that
dies mid-IDLE, a revoked grant, a wrong client secret."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from devstack import Dovecot, ImapAccount, append_messages, count, make_message
from tests.oauthserver import OAuthServer
from tests.support import (
    RECORDING_HANDLER,
    handled,
    queue,
    run_worker,
    use_config,
    wait_for,
    watching,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer(username="nobody") as server:
        yield server


@pytest.fixture(scope="module")
def oauth_dovecot(tmp_path_factory: pytest.TempPathFactory, oauth: OAuthServer) -> Iterator[Dovecot]:
    server = Dovecot(
        tmp_path_factory.mktemp("dovecot-oauth2"), users={}, oauth2_introspection_url=oauth.introspection_url
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def account(oauth_dovecot: Dovecot, oauth: OAuthServer) -> ImapAccount:
    """A fresh user (its password only for the test's own APPENDs); tokens are issued for it."""
    user = f"o{uuid.uuid4().hex[:12]}"
    oauth.username = user
    oauth.tokens.clear()
    oauth.token_requests.clear()
    oauth.refresh_tokens = {"refresh-1"}
    return oauth_dovecot.add_user(user, "secret")


def _imap(account: ImapAccount) -> tuple[str, int, str, str]:
    return (account.host, account.port, account.username, account.password)


def oauth2_mailbox(
    tmp_path: Path, account: ImapAccount, oauth: OAuthServer, secret: str = "s3cret", **oauth2: Any
) -> dict[str, Any]:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(secret + "\n")
    source = {"client_credentials": {"client_id": "mailroom", "client_secret_file": str(secret_file),
                                     "token_url": oauth.token_url}}  # fmt: skip
    return {
        "name": "cloud",
        "host": account.host,
        "port": account.port,
        "security": "none",
        "username": account.username,
        "auth": "oauth2",
        "oauth2": {**source, **oauth2},
        "handler": RECORDING_HANDLER,
        "retries": [],
    }


def _settings(tmp_path, monkeypatch, redis_url, mailbox):
    return use_config(monkeypatch, write_config(tmp_path / "c.yml", redis_url, mailbox))


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_login_and_delivery_exactly_once(
    mechanism, tmp_path, monkeypatch, redis_url, account, oauth, oauth_dovecot
):
    mailbox = oauth2_mailbox(tmp_path, account, oauth, mechanism=mechanism)
    settings = _settings(tmp_path, monkeypatch, redis_url, mailbox)
    with watching(settings):
        append_messages(*_imap(account), [make_message(1, to="incoming+abc123@example.com")])
        wait_for(lambda: len(queue(redis_url)) == 1)
        wait_for(lambda: count(*_imap(account)) == 0)
    run_worker(redis_url)
    assert [r.split("|")[1] for r in handled(redis_url)] == ["abc123"]
    log = (oauth_dovecot.log_path).read_text()
    assert f"Login: user=<{account.username}>, method={mechanism.upper()}" in log


def test_token_that_dies_mid_idle_is_replaced_on_reconnect(
    tmp_path, monkeypatch, redis_url, account, oauth, oauth_dovecot
):
    settings = _settings(tmp_path, monkeypatch, redis_url, oauth2_mailbox(tmp_path, account, oauth))
    with watching(settings) as running:
        append_messages(*_imap(account), [make_message(1)])
        wait_for(lambda: count(*_imap(account)) == 0)
        # The token expires while the watcher IDLEs; the server then ends the session (as Microsoft
        # 365 does with "BYE ... AccessTokenExpired"). Mail arrives while the watcher is away.
        oauth.revoke_all()
        oauth_dovecot.doveadm("kick", account.username)
        append_messages(*_imap(account), [make_message(2)])
        wait_for(lambda: count(*_imap(account)) == 0, timeout=30)
        status = running.watchers[0].status
        wait_for(lambda: status.connected)
    print(f"token requests: {len(oauth.token_requests)}, introspections: {oauth.introspections}")
    assert len(oauth.token_requests) == 2  # the first token, then one fresh one after the refusal
    assert len(queue(redis_url)) == 2
    run_worker(redis_url)
    assert sorted(r.split("|")[1] for r in handled(redis_url)) == ["key1", "key2"]


def test_revoked_grant_marks_nothing_and_shows_in_status(
    tmp_path, monkeypatch, redis_url, account, oauth, oauth_dovecot
):
    refresh = tmp_path / "refresh-token"
    refresh.write_text("refresh-1\n")
    secret = tmp_path / "google-secret"
    secret.write_text("s3cret\n")
    mailbox = oauth2_mailbox(tmp_path, account, oauth)
    grant = {
        "client_id": "mailroom",
        "client_secret_file": str(secret),
        "refresh_token_file": str(refresh),
        "token_url": oauth.token_url,
    }
    mailbox["oauth2"] = {"refresh_token": grant}
    settings = _settings(tmp_path, monkeypatch, redis_url, mailbox)
    with watching(settings) as running:
        append_messages(*_imap(account), [make_message(1)])
        wait_for(lambda: count(*_imap(account)) == 0)
        oauth.refresh_tokens.clear()  # the user revoked the app: no more tokens
        oauth.revoke_all()
        oauth_dovecot.doveadm("kick", account.username)
        append_messages(*_imap(account), [make_message(2)])
        status = running.watchers[0].status
        wait_for(lambda: status.last_error is not None and "invalid_grant" in status.last_error, timeout=20)
        assert not status.connected
        print(status.last_error)
    assert count(*_imap(account)) == 1  # the second message is still unseen
    assert len(queue(redis_url)) == 1


def test_wrong_client_secret_is_a_clear_error_naming_the_mailbox(
    tmp_path, monkeypatch, redis_url, account, oauth, oauth_dovecot
):
    mailbox = oauth2_mailbox(tmp_path, account, oauth, secret="not-the-secret")
    settings = _settings(tmp_path, monkeypatch, redis_url, mailbox)
    append_messages(*_imap(account), [make_message(1)])
    with structlog.testing.capture_logs() as logs, watching(settings) as running:
        status = running.watchers[0].status
        wait_for(lambda: status.last_error is not None, timeout=10)
        assert not status.connected
    failures = [e for e in logs if e["event"] == "imap_login_failed"]
    print(failures[0])
    assert failures and failures[0]["mailbox"] == "cloud"
    assert "invalid_client" in failures[0]["error"]
    assert "not-the-secret" not in str(logs)
    assert count(*_imap(account)) == 1
    assert len(queue(redis_url)) == 0
