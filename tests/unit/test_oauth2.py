"""Token sources against a local token endpoint (tests/oauthserver.py), and the SASL mechanism choice."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailroom.config import OAuth2Config
from mailroom.errors import TokenError
from mailroom.oauth2 import (
    FileTokenSource,
    GrantTokenSource,
    choose_mechanism,
    token_source_for,
)
from tests.oauthserver import OAuthServer


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer(username="incoming") as server:
        yield server


def _secret(tmp_path: Path, value: str = "s3cret") -> Path:
    path = tmp_path / "client-secret"
    path.write_text(value + "\n")
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_client_credentials_caches_and_renews_before_expiry(oauth: OAuthServer, tmp_path: Path) -> None:
    oauth.expires_in = 600
    clock = Clock()
    source = GrantTokenSource(
        name="m",
        token_url=oauth.token_url,
        client_id="mailroom",
        client_secret_file=_secret(tmp_path),
        scope="https://outlook.office365.com/.default",
        refresh_margin=300,
        clock=clock,
    )
    first = source.token()
    assert oauth.active(first) is not None
    clock.now += 299  # 300 s before expiry: still cached
    assert source.token() == first
    clock.now += 2  # inside the margin: renewed before it expires
    second = source.token()
    assert second != first
    assert [r["grant_type"] for r in oauth.token_requests] == ["client_credentials"] * 2


def test_short_lived_tokens_renew_at_half_life(oauth: OAuthServer, tmp_path: Path) -> None:
    oauth.expires_in = 60
    clock = Clock()
    source = GrantTokenSource(
        name="m",
        token_url=oauth.token_url,
        client_id="mailroom",
        client_secret_file=_secret(tmp_path),
        scope=None,
        refresh_margin=300,
        clock=clock,
    )
    first = source.token()
    clock.now += 29
    assert source.token() == first
    clock.now += 2
    assert source.token() != first


def test_invalidate_fetches_a_new_token(oauth: OAuthServer, tmp_path: Path) -> None:
    source = GrantTokenSource(
        name="m",
        token_url=oauth.token_url,
        client_id="mailroom",
        client_secret_file=_secret(tmp_path),
        scope=None,
    )
    first = source.token()
    source.invalidate()
    assert source.token() != first


def test_wrong_client_secret_is_a_clear_error_without_the_secret(oauth: OAuthServer, tmp_path: Path) -> None:
    source = GrantTokenSource(
        name="m",
        token_url=oauth.token_url,
        client_id="mailroom",
        client_secret_file=_secret(tmp_path, "wrong-secret-value"),
        scope=None,
    )
    with pytest.raises(TokenError) as caught:
        source.token()
    message = str(caught.value)
    print(message)
    assert "invalid_client" in message
    assert oauth.token_url in message
    assert "wrong-secret-value" not in message


def test_refresh_token_grant_and_revoked_refresh_token(oauth: OAuthServer, tmp_path: Path) -> None:
    refresh = tmp_path / "refresh"
    refresh.write_text("refresh-1\n")
    config = OAuth2Config.model_validate(
        {
            "refresh_token": {
                "client_id": "mailroom",
                "client_secret_file": str(_secret(tmp_path)),
                "refresh_token_file": str(refresh),
                "token_url": oauth.token_url,
            }
        }
    )
    source = token_source_for("gmail", config)
    assert oauth.active(source.token()) is not None
    assert oauth.token_requests[-1]["grant_type"] == "refresh_token"
    oauth.refresh_tokens.clear()  # the user revoked the app's access
    source.invalidate()
    with pytest.raises(TokenError, match="invalid_grant"):
        source.token()


def test_unreachable_token_endpoint(tmp_path: Path) -> None:
    source = GrantTokenSource(
        name="m",
        token_url="http://127.0.0.1:9/token",
        client_id="mailroom",
        client_secret_file=_secret(tmp_path),
        scope=None,
        timeout=2,
    )
    with pytest.raises(TokenError, match="ConnectionError"):
        source.token()


def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("token-one\n")
    now = [0.0]
    source = FileTokenSource(path, clock=lambda: now[0])
    assert source.token() == "token-one"
    path.write_text("token-two-longer\n")
    assert source.token() == "token-one"  # looked at once a second at most
    now[0] += 1
    assert source.token() == "token-two-longer"
    # same size, new mtime: still noticed
    path.write_text("token-two-LONGER\n")
    os.utime(path, ns=(1, 1))
    now[0] += 1
    assert source.token() == "token-two-LONGER"
    path.write_text("token-three\n")
    source.invalidate()  # the server refused the token: look again now
    assert source.token() == "token-three"


def test_token_file_swap_keeps_the_last_good_token(tmp_path: Path) -> None:
    """A Kubernetes Secret swap leaves the file missing or empty for a moment: the login in that moment
    uses the token of a second ago instead of failing."""
    path = tmp_path / "token"
    path.write_text("token-one\n")
    now = [0.0]
    source = FileTokenSource(path, clock=lambda: now[0])
    assert source.token() == "token-one"
    for swap in (path.unlink, lambda: path.write_text("\n")):
        swap()
        now[0] += 1
        assert source.token() == "token-one"
    path.write_text("token-two\n")
    now[0] += 1
    assert source.token() == "token-two"


def test_token_file_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="token_file"):
        FileTokenSource(tmp_path / "absent").token()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        FileTokenSource(empty).token()


@pytest.mark.parametrize(
    ("capabilities", "wanted", "chosen"),
    [
        ({b"AUTH=XOAUTH2", b"AUTH=OAUTHBEARER"}, "auto", "XOAUTH2"),
        ({b"AUTH=OAUTHBEARER"}, "auto", "OAUTHBEARER"),
        ({b"AUTH=PLAIN"}, "auto", "XOAUTH2"),
        ({b"AUTH=XOAUTH2", b"AUTH=OAUTHBEARER"}, "oauthbearer", "OAUTHBEARER"),
        ({b"AUTH=OAUTHBEARER"}, "xoauth2", "XOAUTH2"),
    ],
)
def test_choose_mechanism(capabilities: set[bytes], wanted: str, chosen: str) -> None:
    assert choose_mechanism(frozenset(capabilities), wanted) == chosen
