"""`mailroom import` on real-world configs: mail_room's README examples, an Omnibus-rendered mail_room.yml,
the Helm chart's ConfigMap and values, gitlab.yml. Each converted config passes check-config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mailroom.cli import cli
from mailroom.migrate import ImportRefused, Options, Severity, import_file, import_text, render

DATA = Path(__file__).resolve().parents[1] / "data" / "migrate"
GITLAB_URL = "http://gitlab-webservice-default.gitlab.svc:8181"


def _import(name: str, **options: Any) -> Any:
    return import_file(DATA / name, Options(**options))


def _notes(result: Any, severity: Severity | None = None) -> list[str]:
    return [n.as_line() for n in result.notes if severity is None or n.severity is severity]


def test_an_omnibus_mail_room_yml_becomes_gitlab_webhook_mailboxes() -> None:
    result = _import("omnibus_mail_room.yml", secrets_dir="/run/secrets/mailroom")
    incoming, service_desk = result.config["mailboxes"]
    assert incoming["name"] == "incoming_email" and service_desk["name"] == "service_desk_email"
    assert incoming["host"] == "imap.example.com" and incoming["security"] == "tls" and "port" not in incoming
    assert incoming["username"] == "incoming@gitlab.example.com"
    assert incoming["handler"] == "webhook"
    assert incoming["webhook"] == {
        "url": "http://127.0.0.1:8080/api/v4/internal/mail_room/incoming_email",
        "secret_file": "/var/opt/gitlab/gitlab-rails/etc/gitlab_incoming_email_secret",
    }
    assert incoming["after_delivery"] == "delete" and incoming["idle_timeout"] == 60
    # GitLab's expunge_deleted: false and mail_room's default search (UNSEEN) carry over as they were.
    assert incoming["expunge_deleted"] is False and incoming["search"] == "UNSEEN"
    assert result.config["redis_url"] == "unix:///var/opt/gitlab/redis/redis.socket"


def test_an_inline_password_becomes_a_file_to_create_and_is_never_written() -> None:
    result = _import("omnibus_mail_room.yml", secrets_dir="/run/secrets/mailroom")
    text = render(result)
    assert "imap-password-incoming" not in text and "imap-password-service-desk" not in text
    assert result.config["mailboxes"][0]["password_file"] == "/run/secrets/mailroom/incoming_email-password"
    actions = _notes(result, Severity.ACTION)
    assert any(
        "incoming_email: password: was inline" in a and "incoming_email-password" in a for a in actions
    )
    assert "# Before starting mailroom:" in text  # the actions head the written file too


def test_every_option_not_carried_over_is_named() -> None:
    notes = _notes(_import("omnibus_mail_room.yml"))
    assert any("arbitration_method" in n and n.startswith("dropped") for n in notes)
    assert any("logger.log_path" in n and "mail_room_json.log" in n for n in notes)


def test_helm_configmap_erb_file_read_stays_a_file_reference() -> None:
    result = _import("helm_configmap_mail_room.yml")
    (box,) = result.config["mailboxes"]
    assert box["password_file"] == "/etc/gitlab/mailroom/password_incoming_email"
    assert result.config["http_port"] == 8080
    assert not any("password" in n for n in _notes(result, Severity.ACTION))


def test_gitlab_yml_sections_become_mailboxes_with_their_addresses() -> None:
    result = import_file(DATA / "gitlab.yml", Options(), "gitlab")
    incoming, service_desk = result.config["mailboxes"]
    assert incoming["address"] == "gitlab-incoming+%{key}@example.com"
    assert service_desk["address"] == "contact-project+%{key}@example.com"
    assert (
        service_desk["webhook"]["url"] == "http://127.0.0.1:8080/api/v4/internal/mail_room/service_desk_email"
    )
    assert "not-a-real-password" not in render(result)


def test_gitlab_yml_other_environment_and_disabled_sections() -> None:
    result = import_file(DATA / "gitlab.yml", Options(), "gitlab", rails_env="development")
    assert [box["name"] for box in result.config["mailboxes"]] == ["service_desk_email"]
    assert any("incoming_email: enabled: not enabled" in n for n in _notes(result))


def test_a_password_in_gitlabs_encrypted_settings_becomes_a_file_to_fill() -> None:
    text = "production:\n  incoming_email:\n    enabled: true\n    address: in+%{key}@example.com\n"
    text += "    user: in@example.com\n    host: imap.example.com\n    ssl: true\n"
    text += "    delivery_method: webhook\n    gitlab_url: http://127.0.0.1:8080\n"
    result = import_text(text, Options(secrets_dir="/s"))
    (box,) = result.config["mailboxes"]
    assert box["password_file"] == "/s/incoming_email-password"
    assert any("gitlab-rake gitlab:incoming_email:secret:show" in n for n in _notes(result, Severity.ACTION))


def test_helm_values_need_the_workhorse_url() -> None:
    with pytest.raises(ImportRefused) as refused:
        _import("helm-values.yml")
    assert all("--gitlab-url" in problem for problem in refused.value.problems)
    result = _import("helm-values.yml", gitlab_url=GITLAB_URL)
    incoming, service_desk = result.config["mailboxes"]
    assert incoming["password_file"] == "/etc/gitlab/mailroom/password_incoming_email"
    assert incoming["webhook"]["secret_file"] == "/etc/gitlab/mailroom/incoming_email_webhook_secret"
    assert service_desk["kind"] == "graph" and service_desk["poll_interval"] == 30
    assert service_desk["graph"]["client_secret_file"] == "/etc/gitlab/mailroom/client_id_service_desk"
    assert any("gitlab-incoming-email-password" in n for n in _notes(result, Severity.ACTION))


def test_erb_env_is_refused_clearly_without_env_and_resolved_with_it() -> None:
    with pytest.raises(ImportRefused) as refused:
        _import("erb_env.yml")
    assert any("line 4" in p and "$IMAP_HOST" in p and "--env" in p for p in refused.value.problems)
    environ = {"IMAP_HOST": "imap.example.org", "IMAP_PORT": "1993", "IMAP_USER": "u@example.org"}
    result = _import("erb_env.yml", environ=environ, secrets_dir="/s")
    (box,) = result.config["mailboxes"]
    assert (box["host"], box["port"], box["username"]) == ("imap.example.org", 1993, "u@example.org")
    assert box["password_file"] == "/s/incoming_email-password"
    assert any("$IMAP_PASSWORD" in n and "/s/incoming_email-password" in n for n in _notes(result))


def test_erb_code_is_refused_with_its_line() -> None:
    text = ":mailboxes:\n<% configs.each do |c| %>\n  - :email: <%= c[:user].to_json %>\n<% end %>\n"
    with pytest.raises(ImportRefused) as refused:
        import_text(text, Options())
    assert any(p.startswith("line 2: ERB code") and "gitlab.yml" in p for p in refused.value.problems)
    assert any(p.startswith("line 3: ERB expression") for p in refused.value.problems)


def test_readme_examples_carry_their_postback_options() -> None:
    result = _import("readme.yml", gitlab_url="http://127.0.0.1:8080", secrets_dir="/s")
    boxes = {box["name"]: box for box in result.config["mailboxes"]}
    assert boxes["alice"]["webhook"] == {
        "url": "http://localhost:3000/inbox",
        "token_file": "/s/alice-token",
        "token_scheme": "Token",  # what Faraday's token auth sends
    }
    assert boxes["carol"]["handler"] == "log"
    assert boxes["erin"]["webhook"]["url"] == "http://127.0.0.1:8080/api/v4/internal/mail_room/incoming_email"
    assert boxes["frank"]["handler"] == "webhook"
    assert boxes["grace"]["kind"] == "graph" and boxes["grace"]["graph"]["tenant"] == "12345"
    assert boxes["heidi"]["webhook"] == {
        "url": "http://localhost:3000/inbox",
        "secret_file": "/etc/secrets/mailroom/.mailroom_secret",
        "jwt_header": "Mailroom-Api-Request",
        "jwt_issuer": "mailroom",
    }
    assert boxes["ivan"]["webhook"] == {
        "url": "https://example.com/rails/action_mailbox/relay/inbound_emails",
        "username": "actionmailbox",
        "password_file": "/s/ivan-webhook-password",
        "content_type": "message/rfc822",  # Faraday's form encoding would get 415 from Rails
    }
    assert boxes["ivan"]["address"] == "ivan@example.com"  # Action Mailbox: a catch-all, no reply key
    text = render(result)
    for secret in ("alice-token", "ingress-password", "redis-password", "grace-client-secret"):
        assert f": {secret}" not in text and f":{secret}@" not in text
    notes = _notes(result)
    assert any(n.startswith("changed: alice: search_command: NEW (RECENT UNSEEN) -> UNSEEN") for n in notes)
    assert boxes["alice"]["search"] == "UNSEEN"
    assert any("frank: delivery_options.redis_url: has a password" in n for n in notes)


def test_readme_letter_opener_is_refused_by_name() -> None:
    with pytest.raises(ImportRefused) as refused:
        _import("readme_letter_opener.yml")
    assert refused.value.problems == [
        "dave: delivery_method: 'letter_opener' has no mailroom counterpart: write a handler "
        "(docs/handlers.md) and set handler"
    ]


def test_a_postback_without_authentication_is_refused() -> None:
    text = ":mailboxes:\n  - :email: a@example.com\n    :password: p\n    :name: inbox\n"
    text += "    :delivery_options:\n      :delivery_url: https://app.example.com/mail\n"
    with pytest.raises(ImportRefused) as refused:
        import_text(text, Options())
    assert "always authenticates" in refused.value.problems[0]


@pytest.mark.parametrize(
    ("command", "search", "note"),
    [
        ('FROM "alerts@example.com"', 'UNSEEN FROM "alerts@example.com"', None),
        ("UNSEEN SUBJECT ticket", "UNSEEN SUBJECT ticket", None),
        ("RECENT", None, "dropped: box: search_command: 'RECENT': RECENT: \\Recent is given to one session"),
        ("NOT SEEN", None, "dropped: box: search_command: 'NOT SEEN': NOT: only plain keys"),
    ],
)
def test_search_command_carried_where_the_guard_design_allows(command: str, search: Any, note: Any) -> None:
    text = ":mailboxes:\n  - :email: box@example.com\n    :password: p\n    :name: inbox\n"
    text += (
        f"    :delete_after_delivery: true\n    :search_command: '{command}'\n    :delivery_method: logger\n"
    )
    result = import_text(text, Options())
    (box,) = result.config["mailboxes"]
    assert box.get("search") == search
    assert note is None or any(n.startswith(note) for n in _notes(result))


def test_unknown_input_is_refused() -> None:
    with pytest.raises(ImportRefused):
        import_text("something: else\n", Options())


def _with_files(value: Any, root: Path) -> Any:
    """Every *_file path moved under ``root`` and created (holding a Base64 secret), as the operator would."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key.endswith("_file") and isinstance(item, str):
                path = root / item.lstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("c2VjcmV0LWZvci10ZXN0cw==\n")
                out[key] = str(path)
            else:
                out[key] = _with_files(item, root)
        return out
    if isinstance(value, list):
        return [_with_files(item, root) for item in value]
    return value


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("omnibus_mail_room.yml", []),
        ("helm_configmap_mail_room.yml", []),
        ("gitlab.yml", []),
        ("helm-values.yml", ["--gitlab-url", GITLAB_URL]),
        ("erb_env.yml", ["--env"]),
        ("readme.yml", ["--gitlab-url", "http://127.0.0.1:8080"]),
    ],
)
def test_each_converted_config_passes_check_config(name: str, args: list[str], tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"IMAP_HOST": "imap.example.org", "IMAP_PORT": "993", "IMAP_USER": "u@example.org"}
    out = tmp_path / "mailroom.yml"
    result = runner.invoke(cli, ["import", str(DATA / name), "-o", str(out), *args], env=env)
    assert result.exit_code == 0, result.output
    assert "imported" in result.stderr
    config = yaml.safe_load(out.read_text())
    (tmp_path / "ready.yml").write_text(yaml.safe_dump(_with_files(config, tmp_path / "files")))
    checked = runner.invoke(cli, ["--config", str(tmp_path / "ready.yml"), "check-config"])
    assert checked.exit_code == 0, checked.output


def test_import_cli_refuses_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "mailroom.yml"
    result = CliRunner().invoke(cli, ["import", str(DATA / "erb_env.yml"), "-o", str(out)])
    assert result.exit_code == 2
    assert "import error:" in result.stderr and not out.exists()


def test_import_cli_does_not_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "mailroom.yml"
    out.write_text("keep me\n")
    args = ["import", str(DATA / "omnibus_mail_room.yml"), "-o", str(out)]
    assert CliRunner().invoke(cli, args).exit_code == 2
    assert out.read_text() == "keep me\n"
    assert CliRunner().invoke(cli, [*args, "--force"]).exit_code == 0
