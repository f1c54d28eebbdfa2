"""Config for cloud mailboxes: kind/auth make host, username and password conditional; check-config
explains a bad OAuth2 or Graph setup in one line per problem, naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mailroom.cli import cli
from mailroom.config import AuthMethod, MailboxKind, load_settings
from mailroom.errors import ConfigError


def _load(tmp_path: Path, mailbox: dict[str, Any]) -> Any:
    path = tmp_path / "mailroom.yml"
    path.write_text(yaml.safe_dump({"mailboxes": [mailbox]}))
    return load_settings(path, environ={})


def _problems(tmp_path: Path, mailbox: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, mailbox)
    return caught.value.problems


@pytest.fixture
def secret(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    return str(path)


def test_oauth2_client_credentials_mailbox(tmp_path: Path, secret: str) -> None:
    settings = _load(
        tmp_path,
        {
            "name": "m365",
            "host": "outlook.office365.com",
            "username": "support@contoso.com",
            "auth": "oauth2",
            "oauth2": {
                "client_credentials": {"tenant": "contoso", "client_id": "abc", "client_secret_file": secret}
            },
        },
    )
    (mailbox,) = settings.mailboxes
    assert mailbox.auth is AuthMethod.OAUTH2
    assert mailbox.oauth2.mechanism == "auto"
    cc = mailbox.oauth2.client_credentials
    assert cc.effective_token_url == "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
    assert cc.scope == "https://outlook.office365.com/.default"


def test_graph_mailbox_needs_no_host_username_or_password(tmp_path: Path, secret: str) -> None:
    graph = {"tenant": "contoso", "client_id": "abc", "client_secret_file": secret, "user": "s@contoso.com"}
    settings = _load(tmp_path, {"name": "g", "kind": "graph", "graph": graph})
    (mailbox,) = settings.mailboxes
    assert mailbox.kind is MailboxKind.GRAPH
    assert mailbox.graph.client_credentials().scope == "https://graph.microsoft.com/.default"


@pytest.mark.parametrize(
    ("mailbox", "expected"),
    [
        (
            {"name": "a", "auth": "oauth2"},
            ["mailboxes.0.host: required", "mailboxes.0.username: required"],
        ),
        (
            {"name": "a", "host": "h", "username": "u", "auth": "oauth2"},
            ["mailboxes.0.oauth2: auth: oauth2 needs an oauth2: section (token_file, ...)"],
        ),
        (
            {"name": "a", "host": "h", "username": "u", "auth": "oauth2", "oauth2": {}},
            ["mailboxes.0.oauth2: set exactly one of token_file, client_credentials or refresh_token"],
        ),
        (
            {
                "name": "a",
                "host": "h",
                "username": "u",
                "auth": "oauth2",
                "oauth2": {"client_credentials": {"client_id": "c", "client_secret_file": "/nonexistent"}},
            },
            [
                "mailboxes.0.oauth2.client_credentials.client_secret_file: "
                "/nonexistent is not a readable file",
                "mailboxes.0.oauth2.client_credentials.tenant: required (or give token_url)",
            ],
        ),
        (
            {"name": "a", "host": "h", "username": "u", "password": "p", "oauth2": {"token_file": "SECRET"}},
            ["mailboxes.0.oauth2.token_file: SECRET is not a readable file"],
        ),
        (
            {"name": "a", "kind": "graph"},
            ["mailboxes.0.graph: required"],
        ),
        (
            {"name": "a", "kind": "graph", "host": "h", "graph": {}},
            [
                "mailboxes.0.graph.tenant: required",
                "mailboxes.0.graph.client_id: required",
                "mailboxes.0.graph.client_secret_file: required",
                "mailboxes.0.graph.user: required",
                "mailboxes.0.host: Extra inputs are not permitted",
            ],
        ),
        (
            {"name": "a", "host": "h", "username": "u", "password": "p", "graph": {}},
            ["mailboxes.0.graph: Extra inputs are not permitted"],
        ),
        ({"name": "a", "kind": "pop3"}, ["mailboxes.0: kind must be one of imap, graph"]),
        (
            {"name": "a", "host": "h", "username": "u"},
            ["mailboxes.0.password: set exactly one of password or password_file"],
        ),
    ],
)
def test_one_line_per_problem(tmp_path: Path, mailbox: dict[str, Any], expected: list[str]) -> None:
    assert _problems(tmp_path, mailbox) == expected


def test_password_with_oauth2_and_oauth2_without_auth(tmp_path: Path, secret: str) -> None:
    assert _problems(
        tmp_path,
        {"name": "a", "host": "h", "username": "u", "password": "p", "oauth2": {"token_file": secret}},
    ) == ["mailboxes.0.auth: an oauth2: section is given: set auth: oauth2"]
    assert _problems(
        tmp_path,
        {"name": "a", "host": "h", "username": "u", "password": "p", "auth": "oauth2",
         "oauth2": {"token_file": secret}},
    ) == ["mailboxes.0.password: not used with auth: oauth2; remove password/password_file"]  # fmt: skip


def test_check_config_explains_bad_oauth2_setup(tmp_path: Path) -> None:
    path = tmp_path / "mailroom.yml"
    bad = {
        "name": "m365",
        "host": "outlook.office365.com",
        "username": "support@contoso.com",
        "auth": "oauth2",
        "oauth2": {
            "refresh_token": {"client_id": "c", "refresh_token_file": "/nonexistent", "token_url": "x"}
        },
    }
    path.write_text(yaml.safe_dump({"mailboxes": [bad]}))
    result = CliRunner().invoke(cli, ["--config", str(path), "check-config"])
    print(result.output)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("config error:")]
    assert lines == [
        "config error: mailboxes.0.oauth2.refresh_token.refresh_token_file: "
        "/nonexistent is not a readable file",
        "config error: mailboxes.0.oauth2.refresh_token.token_url: must start with https:// "
        "(http:// only for a server on loopback)",
    ]


def test_secrets_never_go_to_a_plain_http_url_off_loopback():
    from mailroom.config import ClientCredentialsConfig

    with pytest.raises(ValueError, match="http:// only for a server on loopback"):
        ClientCredentialsConfig(
            client_id="c", client_secret_file=__file__, token_url="http://login.example.com/t"
        )
    assert ClientCredentialsConfig(
        client_id="c", client_secret_file=__file__, token_url="http://127.0.0.1:8080/t"
    )
