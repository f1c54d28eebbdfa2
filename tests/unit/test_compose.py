"""docker-compose.yml is valid: checked by a compose client when one is installed, and always structurally.

A compose client validates without a Docker daemon (`config -q`). The structural checks run everywhere, so
this file asserts something even on a machine with no Docker at all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailroom.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _compose_clients() -> list[list[str]]:
    clients = []
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        clients.append([docker, "compose"])
    legacy = shutil.which("docker-compose")
    if legacy:
        clients.append([legacy])
    return clients


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_clients_accept_it() -> None:
    clients = _compose_clients()
    for client in clients:
        result = subprocess.run(
            [*client, "-f", str(COMPOSE), "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, f"{' '.join(client)} config -q: {result.stderr}"
    if not clients:
        # No client here: the structural tests below are the check. Still prove the file is one mapping.
        assert isinstance(yaml.safe_load(COMPOSE.read_text()), dict)


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"greenmail", "redis", "watcher", "worker"} <= services.keys()
    assert services["greenmail"]["image"].startswith("greenmail/standalone")
    assert services["redis"]["image"].startswith("redis:7")
    # docs/reliability.md: a Redis that evicts keys or forgets acknowledged jobs loses mail
    redis_args = " ".join(services["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis_args
    assert "--appendonly yes" in redis_args and "--appendfsync everysec" in redis_args
    assert any("3143" in str(port) for port in services["greenmail"]["ports"])
    opts = services["greenmail"]["environment"]["GREENMAIL_OPTS"]
    assert "-Dgreenmail.users=incoming:secret@example.com" in opts
    for name, command in (("watcher", "watch"), ("worker", "worker")):
        service = services[name]
        assert service["build"] == "."
        assert service["command"] == [command]
        assert service["environment"]["MAILROOM_CONFIG"] == "/etc/mailroom/mailroom.yml"


def test_mounted_config_exists_and_loads(compose: dict[str, Any]) -> None:
    for name in ("watcher", "worker"):
        service = compose["services"][name]
        mounts = [v.split(":") for v in service["volumes"]]
        (source,) = [src for src, dst, *_ in mounts if dst == service["environment"]["MAILROOM_CONFIG"]]
        settings = load_settings(ROOT / source, environ={})
        (mailbox,) = settings.mailboxes
        assert mailbox.host == "greenmail"
        assert mailbox.effective_port == 3143
        assert settings.redis_url.startswith("redis://redis:")


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "USER mailroom" in text
    assert 'ENTRYPOINT ["mailroom"]' in text
    assert 'CMD ["watch"]' in text
    assert 'CMD ["python", "-m", "mailroom.healthcheck"]' in text  # HEALTHCHECK


def _seconds(duration: str) -> float:
    """A compose duration such as ``310s``, ``5m`` or ``1m30s``."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


def test_worker_stop_grace_covers_its_shutdown_timeout(compose: dict[str, Any]) -> None:
    """docker compose SIGKILLs after stop_grace_period: running handlers must have finished by then."""
    worker = compose["services"]["worker"]
    settings = load_settings(ROOT / worker["volumes"][0].split(":")[0], environ={})
    assert settings.worker_shutdown_timeout() >= settings.job_timeout
    assert _seconds(worker["stop_grace_period"]) >= settings.worker_shutdown_timeout() + 5
