"""docker-compose.yml's mailroom services run as Compose would run them, and carry a reply end to end.

Each service's ``command`` runs after the Dockerfile's ENTRYPOINT as the image's USER (uid 10001), with
the image's ENV, the service's ``environment`` and the HOSTNAME Compose sets, and its ``volumes`` bound
at their targets (config/mailroom.compose.yml at /etc/mailroom/mailroom.yml, read-only), in namespaces
of its own (tests/pod.py): the service names in the config (greenmail:3143, redis:6379) resolve and are
forwarded to a real Dovecot (user incoming, password secret, as GREENMAIL_OPTS creates it) and a
redis-server started with the compose redis service's command (checked: noeviction, AOF). Stricter than
Compose: the filesystem is read-only but for /tmp. Nothing in the compose config is
changed. Then a reply is appended; the watcher queues it and the worker logs ``email_handled``; both stop
with exit 0 on SIGTERM within ``stop_grace_period``, after the image's HEALTHCHECK passed in each.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml

from devstack import append_messages, free_port, make_message
from devstack.redis_server import redis_server_binary
from tests import pod

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMPOSE = yaml.safe_load((pod.ROOT / "docker-compose.yml").read_text())
MAILROOM_SERVICES = ("watcher", "worker")

if os.geteuid() != 0:
    pytest.skip(
        "starts services with namespaces and setpriv: needs root (CI runs as root)", allow_module_level=True
    )


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"unsupported duration {duration!r}"
    return float(match.group(1))


def compose_spec(
    name: str, addresses: dict[str, tuple[str, int]]
) -> tuple[pod.PodSpec, dict[int, tuple[str, int]]]:
    service = COMPOSE["services"][name]
    image = pod.dockerfile_image()
    assert service["build"] == "." and image.user == "mailroom"
    volumes = [pod.Volume("/tmp", None, read_only=False)]  # the container layer's writable /tmp
    config_path = None
    for entry in service["volumes"]:
        source, target, *mode = entry.split(":")
        volumes.append(pod.Volume(target, (pod.ROOT / source).resolve(), read_only=mode == ["ro"]))
        if target == service["environment"]["MAILROOM_CONFIG"]:
            config_path = pod.ROOT / source
    assert config_path is not None, "MAILROOM_CONFIG names no mounted file"
    env = pod.BASE_IMAGE_ENV | image.env | {str(k): str(v) for k, v in service["environment"].items()}
    env |= {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOSTNAME": "3f4e5a6b7c8d",  # Compose: the container id
        "HOME": "/home/mailroom",
    }
    command = service.get("command", list(image.cmd))
    argv = [str(Path(sys.executable).parent / image.entrypoint[0]), *command]
    config = yaml.safe_load(config_path.read_text())
    redis_url = urlsplit(config["redis_url"])
    hosts = {redis_url.hostname or "": "127.0.0.1"}
    forward = {redis_url.port or 6379: addresses["redis"]}
    for mailbox in config["mailboxes"]:
        hosts[mailbox["host"]] = "127.0.0.1"
        forward[mailbox["port"]] = addresses["imap"]
    spec = pod.PodSpec(
        argv=argv,
        env=env,
        volumes=volumes,
        uid=10001,  # Dockerfile: useradd --uid 10001, USER mailroom
        gid=10001,
        groups=[],
        hosts=hosts,
        reachable=[Path(sys.base_prefix), Path(sys.prefix), pod.ROOT],
    )
    return spec, forward


@pytest.fixture
def compose_redis():
    """redis-server run with the compose redis service's command (plus a private port and directory)."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(workdir: Path) -> int:
        command = COMPOSE["services"]["redis"]["command"]
        assert command[0] == "redis-server"
        workdir.mkdir()
        port = free_port()
        binary = redis_server_binary()
        extra = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""]
        processes.append(subprocess.Popen([binary, *command[1:], *extra], stdout=subprocess.DEVNULL))
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the compose redis command did not start"
                time.sleep(0.1)
        # what docs/reliability.md asks of Redis, as the compose service runs it
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.info("persistence")["aof_enabled"] == 1
        assert client.config_get("appendfsync")["appendfsync"] in ("everysec", "always")
        return port

    yield start
    for process in processes:
        process.kill()
        process.wait()


@pytest.mark.timeout(240)
def test_compose_services_carry_a_reply_and_stop_on_sigterm(make_dovecot, compose_redis, tmp_path) -> None:
    config = yaml.safe_load((pod.ROOT / "config" / "mailroom.compose.yml").read_text())
    (mailbox,) = config["mailboxes"]
    dovecot = make_dovecot(users={mailbox["username"]: mailbox["password"]})
    redis_port = compose_redis(tmp_path / "redis")
    addresses = {"redis": ("127.0.0.1", redis_port), "imap": ("127.0.0.1", dovecot.port)}
    with ExitStack() as stack:
        pods: dict[str, Any] = {}
        for name in MAILROOM_SERVICES:
            spec, forward = compose_spec(name, addresses)
            pods[name] = stack.enter_context(pod.running(spec, tmp_path / name, forward))
        append_messages(
            dovecot.host, dovecot.port, mailbox["username"], mailbox["password"],
            [make_message(1, to=mailbox["address"].replace("%{key}", "demo-key-123"))],
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while "email_handled" not in pods["worker"].log():
            for name, running in pods.items():
                assert running.process.poll() is None, f"{name} exited:\n{running.log()}"
            assert time.monotonic() < deadline, (
                f"not handled:\n{pods['watcher'].log()}\n{pods['worker'].log()}"
            )
            time.sleep(0.3)
        assert "demo-key-123" in pods["worker"].log()
        # the image's HEALTHCHECK, run inside each container as Docker would
        healthcheck = pod.dockerfile_image().healthcheck
        for name, running in pods.items():
            result = running.exec(healthcheck)
            assert result.returncode == 0, f"{name} HEALTHCHECK: {result.stdout}{result.stderr}"
            assert "/healthz: 200" in result.stdout
        for name, running in pods.items():
            grace = _seconds(COMPOSE["services"][name]["stop_grace_period"])
            code = running.stop(grace)
            assert code == 0, f"{name}: exit {code} after SIGTERM (grace {grace} s):\n{running.log()}"
            assert "Traceback" not in running.log(), running.log()
