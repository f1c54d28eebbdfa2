"""The image's HEALTHCHECK (python -m mailroom.healthcheck) and `mailroom --version`."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mailroom.cli import cli
from mailroom.health import Check, Report
from mailroom.healthcheck import probe
from mailroom.web import HealthServer
from tests.pod import dockerfile_image


class FixedProbe:
    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def liveness(self) -> Report:
        return Report((Check("watcher:support", self.ok),))

    def readiness(self) -> Report:
        return Report((Check("redis", True),))


@pytest.mark.parametrize(("ok", "status"), [(True, 200), (False, 503)])
def test_probe_asks_healthz(ok: bool, status: int) -> None:
    server = HealthServer(0, FixedProbe(ok), host="127.0.0.1").start()
    try:
        assert probe(server.port) == (ok, f"http://127.0.0.1:{server.port}/healthz: {status}")
    finally:
        server.stop()


def test_probe_of_a_closed_port_is_unhealthy() -> None:
    server = HealthServer(0, FixedProbe(True), host="127.0.0.1").start()
    port = server.port
    server.stop()
    ok, detail = probe(port, timeout=2)
    assert not ok and detail.startswith(f"http://127.0.0.1:{port}/healthz: ")


def _healthcheck(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailroom.healthcheck"],
        env={"MAILROOM_CONFIG": str(config), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_command_probes_the_configured_port_and_exits_1_when_unhealthy(tmp_path: Path) -> None:
    server = HealthServer(0, FixedProbe(False), host="127.0.0.1").start()
    try:
        config = tmp_path / "mailroom.yml"
        config.write_text(yaml.safe_dump({"http_port": server.port}))
        result = _healthcheck(config)
    finally:
        server.stop()
    assert result.returncode == 1, result.stderr
    assert result.stdout == f"healthcheck: http://127.0.0.1:{server.port}/healthz: 503\n"


def test_the_command_without_http_port_has_nothing_to_probe(tmp_path: Path) -> None:
    config = tmp_path / "mailroom.yml"
    config.write_text("log_format: json\n")
    result = _healthcheck(config)
    assert (result.returncode, result.stdout) == (
        0,
        "healthcheck: no http_port configured, nothing to probe\n",
    )


def test_the_dockerfile_healthcheck_runs_this_module() -> None:
    assert dockerfile_image().healthcheck == ("python", "-m", "mailroom.healthcheck")


def test_version_comes_from_the_package_metadata() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"mailroom {importlib.metadata.version('mailroom')}\n"
