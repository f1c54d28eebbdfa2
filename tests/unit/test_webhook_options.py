"""The webhook's delivery options, as mail_room's postback has them; GitLab's defaults unchanged."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import jwt
import pytest
from pydantic import ValidationError

from mailroom.config import WebhookConfig
from workers.handlers.webhook import WebhookHandler

KEY = b"0123456789abcdef0123456789abcdef"
URL = "https://app.example.com/inbox"


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    return path


def test_gitlab_defaults_are_unchanged(tmp_path: Path) -> None:
    config = WebhookConfig(url=URL, secret_file=_file(tmp_path, "key", base64.b64encode(KEY).decode()))
    headers = WebhookHandler(config).headers()
    assert set(headers) == {"Content-Type", "Gitlab-Mailroom-Api-Request"}
    assert headers["Content-Type"] == "text/plain"
    claims = jwt.decode(
        headers["Gitlab-Mailroom-Api-Request"], KEY, algorithms=["HS256"], issuer="gitlab-mailroom"
    )
    assert "iat" in claims


def test_jwt_header_issuer_and_algorithm_as_configured(tmp_path: Path) -> None:
    key = KEY * 2  # HS512 wants 64 bytes
    config = WebhookConfig(
        url=URL,
        secret_file=_file(tmp_path, "key", base64.b64encode(key).decode()),
        jwt_header="Mailroom-Api-Request",
        jwt_issuer="mailroom",
        jwt_algorithm="HS512",
        content_type="message/rfc822",
    )
    headers = WebhookHandler(config).headers()
    assert "Gitlab-Mailroom-Api-Request" not in headers
    assert headers["Content-Type"] == "message/rfc822"
    token = headers["Mailroom-Api-Request"]
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    jwt.decode(token, key, algorithms=["HS512"], issuer="mailroom")


def test_a_rotated_basic_auth_password_takes_effect_within_a_second(tmp_path: Path) -> None:
    """The files are read at most once a second (not at each request), like the JWT's key."""
    password = _file(tmp_path, "password", "first")
    config = WebhookConfig(url=URL, username="actionmailbox", password_file=password)
    handler = WebhookHandler(config)
    assert handler.headers() == {
        "Content-Type": "text/plain",
        "Authorization": "Basic " + base64.b64encode(b"actionmailbox:first").decode(),
    }
    password.write_text("rotated\n")
    time.sleep(1.1)
    assert (
        handler.headers()["Authorization"] == "Basic " + base64.b64encode(b"actionmailbox:rotated").decode()
    )


def test_a_token_goes_in_authorization_with_its_scheme(tmp_path: Path) -> None:
    token = _file(tmp_path, "token", "abcdefg")
    assert (
        WebhookHandler(WebhookConfig(url=URL, token_file=token)).headers()["Authorization"]
        == "Bearer abcdefg"
    )
    config = WebhookConfig(url=URL, token_file=token, token_scheme="Token")
    assert WebhookHandler(config).headers()["Authorization"] == "Token abcdefg"


def test_a_jwt_and_basic_auth_travel_together(tmp_path: Path) -> None:
    config = WebhookConfig(
        url=URL,
        secret_file=_file(tmp_path, "key", base64.b64encode(KEY).decode()),
        username="u",
        password_file=_file(tmp_path, "password", "p"),
    )
    headers = WebhookHandler(config).headers()
    assert "Gitlab-Mailroom-Api-Request" in headers and headers["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, "needs secret_file (a JWT), username/password_file or token_file"),
        ({"username": "u"}, "basic auth needs both username and password_file"),
        ({"password_file": "password"}, "basic auth needs both username and password_file"),
        ({"username": "u", "password_file": "password", "token_file": "token"}, "give token_file or basic"),
        ({"token_file": "missing"}, "is not a readable file"),
        ({"token_file": "token", "token_scheme": "Bad Scheme"}, "token_scheme"),
        ({"secret_file": "token", "jwt_algorithm": "RS256"}, "jwt_algorithm"),
    ],
)
def test_refused_webhook_configs_name_the_problem(
    tmp_path: Path, fields: dict[str, str], problem: str
) -> None:
    _file(tmp_path, "password", "p")
    _file(tmp_path, "token", "t")
    values = {k: (str(tmp_path / v) if k.endswith("_file") else v) for k, v in fields.items()}
    with pytest.raises(ValidationError) as refused:
        WebhookConfig(url=URL, **values)  # type: ignore[arg-type]
    assert problem in str(refused.value)
