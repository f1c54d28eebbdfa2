"""Settings from the environment tolerate what platforms inject under MAILROOM_ (issue 10, part 1).

Kubernetes service links, Docker links and other unrelated variables never stop start-up; a variable
naming a field with a bad value is still an error naming it; a misspelt field warns with the closest name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mailroom.config import load_settings
from mailroom.config_env import is_platform_variable, settings_from_env
from mailroom.errors import ConfigError
from tests.pod import service_link_env

MAILBOX = {"name": "support", "host": "imap.example.com", "username": "u", "password": "p"}


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "mailroom.yml"
    path.write_text(yaml.safe_dump({"mailboxes": [MAILBOX]}))
    return path


def _links(name: str, *ports: tuple[str, int]) -> dict[str, str]:
    service = {"metadata": {"name": name}, "spec": {"ports": [{"name": n, "port": p} for n, p in ports]}}
    return service_link_env(service, "10.96.0.7")


def test_kubernetes_service_links_are_not_settings(tmp_path: Path) -> None:
    env = (
        _links("mailroom-metrics", ("http", 9100))
        | _links("mailroom", ("http", 9100), ("smtp", 25))
        | _links("mailroom-redis", ("redis", 6379))
        | _links("mailroom-http", ("http", 80))  # MAILROOM_HTTP_PORT=tcp://...: a link, not http_port
    )
    assert env["MAILROOM_METRICS_PORT"] == "tcp://10.96.0.7:9100"
    assert env["MAILROOM_PORT_25_TCP_ADDR"] == "10.96.0.7"
    assert env["MAILROOM_HTTP_PORT"] == "tcp://10.96.0.7:80"
    warnings: list[str] = []
    settings = load_settings(_config(tmp_path), environ=env, warn=warnings.append)
    assert settings.mailboxes[0].name == "support"
    assert settings.http_port is None
    assert warnings == [
        "config warning: MAILROOM_HTTP_PORT=tcp://10.96.0.7:80 is a service link (a Service named "
        "mailroom-http), not the http_port setting: ignored"
    ]


def test_docker_links_and_unrelated_variables_are_ignored_silently(tmp_path: Path) -> None:
    env = {
        "MAILROOM_NAME": "/web/mailroom",
        "MAILROOM_ENV_REDIS_URL": "redis://elsewhere",
        "MAILROOM_PORT": "tcp://172.17.0.5:9100",
        "MAILROOM_INCOMING_ADDRESS": "in+%{key}@example.com",
        "MAILROOM_BUILD_SHA": "abc123",
    }
    warnings: list[str] = []
    settings = load_settings(_config(tmp_path), environ=env, warn=warnings.append)
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert warnings == []


def test_fields_are_still_set_from_the_environment(tmp_path: Path) -> None:
    env = {
        "MAILROOM_HTTP_PORT": "9100",
        "MAILROOM_REDIS_URL": "redis://redis:6379/1",
        "MAILROOM_MAILBOXES__0__FOLDER": "Replies",
        "MAILROOM_METRICS_SERVICE_HOST": "10.96.0.7",
    }
    settings = load_settings(_config(tmp_path), environ=env, warn=pytest.fail)
    assert settings.http_port == 9100
    assert settings.redis_url == "redis://redis:6379/1"
    assert settings.mailboxes[0].folder == "Replies"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MAILROOM_HTTP_PORT": "ninety"}, "http_port: Input should be a valid integer"),
        ({"MAILROOM_HTTP_PORT": "80000"}, "http_port: Input should be less than or equal to 65535"),
        ({"MAILROOM_LOG_LEVEL": "loud"}, "log_level: Input should be 'debug', 'info', 'warning' or 'error'"),
        ({"MAILROOM_MAILBOXES__0__IDLE_TIMEOUT": "-1"}, "mailboxes.0.idle_timeout: Input should be greater"),
        ({"MAILROOM_MAILBOXES__0__PASWORD_FILE": "/x"}, "mailboxes.0.pasword_file: Extra inputs"),
        ({"MAILROOM_REDIS_URL": "http://redis"}, "redis_url: must be a redis://"),
    ],
)
def test_a_bad_value_for_a_field_is_an_error_naming_the_variable(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path), environ=env, warn=pytest.fail)
    (problem,) = caught.value.problems
    assert problem.startswith(expected)
    assert problem.endswith(f"(set by {next(iter(env))})")


def test_a_bad_whole_list_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    env = {"MAILROOM_MAILBOXES": '[{"name": "x", "host": "h", "username": "u"}]'}
    with pytest.raises(ConfigError) as caught:
        load_settings(_config(tmp_path), environ=env)
    assert caught.value.problems == [
        "mailboxes.0.password: set exactly one of password or password_file (set by MAILROOM_MAILBOXES)"
    ]


def test_mailroom_config_naming_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"MAILROOM_CONFIG": missing})
    assert caught.value.problems == [f"MAILROOM_CONFIG: config file {missing}: No such file or directory"]


def test_errors_from_the_file_do_not_blame_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "mailroom.yml"
    path.write_text(yaml.safe_dump({"mailboxes": [MAILBOX], "http_port": "x"}))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"MAILROOM_LOG_LEVEL": "debug"})
    assert caught.value.problems == [
        "http_port: Input should be a valid integer, unable to parse string as an integer"
    ]


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("MAILROOM_REDIS_ULR", "MAILROOM_REDIS_URL"),
        ("MAILROOM_LOGLEVEL", "MAILROOM_LOG_LEVEL"),
        ("MAILROOM_MAILBOX__0__FOLDER", "MAILROOM_MAILBOXES__0__FOLDER"),
        ("MAILROOM_JOB_TIMOUT", "MAILROOM_JOB_TIMEOUT"),
    ],
)
def test_a_misspelt_field_warns_with_the_closest_field(tmp_path: Path, name: str, suggestion: str) -> None:
    warnings: list[str] = []
    settings = load_settings(_config(tmp_path), environ={name: "x"}, warn=warnings.append)
    assert settings.mailboxes[0].folder == "INBOX"
    assert warnings == [f"config warning: {name} is not a setting (did you mean {suggestion}?): ignored"]


def test_the_default_warning_is_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_settings(_config(tmp_path), environ={"MAILROOM_REDIS_ULR": "redis://x"})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "config warning: MAILROOM_REDIS_ULR is not a setting (did you mean MAILROOM_REDIS_URL?): ignored"
    ]


@pytest.mark.parametrize(
    "rest",
    ["SERVICE_HOST", "SERVICE_PORT", "SERVICE_PORT_HTTP", "PORT", "PORT_9100_TCP", "PORT_9100_TCP_ADDR",
     "PORT_53_UDP_PROTO", "METRICS_SERVICE_HOST", "METRICS_PORT_9100_TCP_PORT", "NAME", "ENV_FOO"],
)  # fmt: skip
def test_platform_variable_shapes(rest: str) -> None:
    assert is_platform_variable(rest)


def test_the_pure_source_reports_overrides_by_path() -> None:
    env = settings_from_env(
        {"MAILROOM_MAILBOXES__1__FOLDER": "A", "OTHER": "x", "MAILROOM_CONFIG": "/c"},
        {"mailboxes"},
        "MAILROOM_",
        {"MAILROOM_CONFIG"},
    )
    (override,) = env.overrides
    assert override.path == ("mailboxes", "1", "folder")
    assert env.source_of(("mailboxes", 1, "folder")) == "MAILROOM_MAILBOXES__1__FOLDER"
    assert env.source_of(("mailboxes", 0, "folder")) is None


def test_a_cli_command_in_json_mode_logs_the_warning_as_json(tmp_path: Path) -> None:
    """A pod's log stays all JSON: the warning waits until the log format is known."""
    config = _config(tmp_path)
    config.write_text(config.read_text() + "log_format: json\n")
    env = {**os.environ, "MAILROOM_REDIS_ULR": "redis://x", "MAILROOM_CONFIG": str(config)}
    result = subprocess.run(
        [sys.executable, "-m", "mailroom", "check-config"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    events = [json.loads(line) for line in lines]  # every line is JSON
    (warning,) = [e for e in events if e["event"] == "config_warning"]
    assert "did you mean MAILROOM_REDIS_URL?" in warning["detail"]
