"""Every Deployment in config/kubernetes/ starts, gets ready and stops cleanly the way a cluster runs it.

tests/pod.py reproduces what the kubelet gives the container (see its docstring): the Dockerfile's
ENTRYPOINT with the container's args, its env and envFrom plus service links for every Service in the
kustomization and for one named ``mailroom`` (whatever ``enableServiceLinks`` says: the loader must not
depend on it), the ConfigMap and the Secret the README tells users to create as files at their mountPaths,
the declared user and groups, a read-only filesystem but for the emptyDirs, and a network namespace of its
own in which the config's server names resolve to forwarders to the real Redis and Dovecot started here.

The one change to the shipped ConfigMap config: the mailbox's ``ca_file`` names the test CA (mounted with
the Secret), because the test's Dovecot has a certificate for imap.example.com from a throw-away CA.
Addresses and ports stay as shipped (redis:6379, imap.example.com:993): /etc/hosts and the forwarders
inside the pod's namespace make them reach the test's servers.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import trustme
import yaml

from devstack import TLSFiles, append_messages, make_message
from tests import pod

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCUMENTS = pod.kustomize_documents()
DEPLOYMENTS = pod.of_kind(DOCUMENTS, "Deployment")
CA_KEY = "imap-ca.pem"  # the test's only addition to the Secret
READY_TIMEOUT = 90.0

if os.geteuid() != 0:
    pytest.skip(
        "starts pods with namespaces and setpriv: needs root (CI runs as root)", allow_module_level=True
    )


def readme_secret(imap_password: str, ca_pem: str) -> dict[str, Any]:
    """The Secret as README's ``kubectl create secret generic mailroom-secrets --from-file=imap-password=``
    makes it (a file written by an editor ends in a newline), plus the test CA."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "mailroom-secrets"},
        "stringData": {"imap-password": imap_password + "\n", CA_KEY: ca_pem},
    }


def link_services() -> list[dict[str, Any]]:
    """Every Service of the kustomization, and one a user might name ``mailroom``."""
    services = list(pod.of_kind(DOCUMENTS, "Service").values())
    ports = [{"name": "http", "port": 9100, "protocol": "TCP"}, {"name": "smtp", "port": 25}]
    return [*services, {"metadata": {"name": "mailroom"}, "spec": {"ports": ports}}]


def config_for_test(shipped: str, secret_dir: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(shipped)
    for mailbox in config["mailboxes"]:
        mailbox["ca_file"] = f"{secret_dir}/{CA_KEY}"
    return config


def _container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def build(
    deployment: dict[str, Any], work: Path, secret: dict[str, Any], servers: dict[str, tuple[str, int]]
) -> tuple[pod.PodSpec, dict[str, Any], dict[int, tuple[str, int]]]:
    """The PodSpec for the Deployment's (only) container, the config it reads, and the forwards."""
    template = deployment["spec"]["template"]["spec"]
    (container,) = template["containers"]
    security = template.get("securityContext", {}) | container.get("securityContext", {})
    fs_group = template.get("securityContext", {}).get("fsGroup")
    image = pod.dockerfile_image()
    volumes = {v["name"]: v for v in template["volumes"]}
    secret_mounts = [m["mountPath"] for m in container["volumeMounts"] if "secret" in volumes[m["name"]]]
    configmaps = dict(pod.of_kind(DOCUMENTS, "ConfigMap"))
    config: dict[str, Any] = {}
    staged: list[pod.Volume] = []
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        read_only = bool(mount.get("readOnly", False))
        if "emptyDir" in volume:
            staged.append(pod.Volume(mount["mountPath"], None, read_only))
            continue
        if "configMap" in volume:
            data = dict(configmaps[volume["configMap"]["name"]]["data"])
            for key, text in data.items():
                if key.endswith((".yml", ".yaml")):
                    config = config_for_test(text, secret_mounts[0])
                    data[key] = yaml.safe_dump(config)
            mode = volume["configMap"].get("defaultMode", 0o644)
        else:
            assert volume["secret"]["secretName"] == secret["metadata"]["name"]
            data = secret["stringData"]
            mode = volume["secret"].get("defaultMode", 0o644)
        directory = pod.stage_volume(work / "volumes" / mount["name"], data, mode, fs_group)
        staged.append(pod.Volume(mount["mountPath"], directory, read_only))
    links = pod.services_env(link_services())
    env = pod.container_env(container, image, configmaps, {secret["metadata"]["name"]: secret}, links)
    venv_bin = str(Path(sys.executable).parent)
    env |= {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOSTNAME": deployment["metadata"]["name"]}
    env.setdefault("HOME", "/home/mailroom")  # the image's user has no home directory
    env = pod.BASE_IMAGE_ENV | env
    command = container.get("command") or list(image.entrypoint)
    args = container.get("args") if "args" in container or "command" in container else list(image.cmd)
    argv = [pod.expand(part, env) for part in [*command, *(args or [])]]
    # the runtime looks the executable up in the image's PATH
    found = subprocess.run(["sh", "-c", f'PATH="{env["PATH"]}" command -v "$0"', argv[0]],
                           capture_output=True, text=True, check=True)  # fmt: skip
    argv[0] = found.stdout.strip()
    hosts: dict[str, str] = {}
    forward: dict[int, tuple[str, int]] = {}
    redis_url = urlsplit(config["redis_url"])
    hosts[redis_url.hostname or ""] = "127.0.0.1"
    forward[redis_url.port or 6379] = servers["redis"]
    for mailbox in config["mailboxes"]:
        hosts[mailbox["host"]] = "127.0.0.1"
        default = 993 if mailbox.get("security", "tls") == "tls" else 143
        forward[mailbox.get("port", default)] = servers["imaps" if default == 993 else "imap"]
    spec = pod.PodSpec(
        argv=argv,
        env=env,
        volumes=staged,
        uid=int(security["runAsUser"]),
        gid=int(security.get("runAsGroup", 0)),
        groups=[int(fs_group)] if fs_group is not None else [],
        hosts=hosts,
        reachable=[Path(sys.base_prefix), Path(sys.prefix), pod.ROOT],
    )
    return (
        spec,
        container | {"_config": config, "_grace": template.get("terminationGracePeriodSeconds", 30)},
        forward,
    )


@pytest.fixture
def servers(make_dovecot, redis_server, tmp_path) -> dict[str, Any]:
    """A Dovecot with IMAPS for imap.example.com (user and password as the Secret has them), and Redis."""
    shipped = yaml.safe_load(pod.of_kind(DOCUMENTS, "ConfigMap")["mailroom-config"]["data"]["mailroom.yml"])
    (mailbox,) = shipped["mailboxes"]
    ca = trustme.CA()
    cert = ca.issue_cert(mailbox["host"])
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    password = secrets.token_urlsafe(12)
    dovecot = make_dovecot(users={mailbox["username"]: password}, tls=TLSFiles(cert_path, key_path))
    if not redis_server.running:
        redis_server.start()
    redis_server.client().flushall()
    return {
        "dovecot": dovecot,
        "mailbox": mailbox,
        "secret": readme_secret(password, ca.cert_pem.bytes().decode()),
        "addresses": {
            "redis": ("127.0.0.1", redis_server.port),
            "imaps": ("127.0.0.1", dovecot.imaps_port),
            "imap": ("127.0.0.1", dovecot.port),
        },
        "redis": redis_server,
    }


def _wait_ready(running: pod.Pod, container: dict[str, Any]) -> None:
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    live_port, ready_port = (
        _container_port(container, live["port"]),
        _container_port(container, ready["port"]),
    )
    deadline = time.monotonic() + READY_TIMEOUT
    status: tuple[int | None, int | None] = (None, None)
    while time.monotonic() < deadline:
        assert running.process.poll() is None, f"exited {running.process.returncode}:\n{running.log()}"
        status = (running.probe(live_port, live["path"]), running.probe(ready_port, ready["path"]))
        if status == (200, 200):
            return
        time.sleep(0.5)
    pytest.fail(
        f"not live and ready within {READY_TIMEOUT} s (liveness, readiness: {status}):\n{running.log()}"
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment_starts_gets_ready_and_stops_on_sigterm(name, servers, tmp_path) -> None:
    spec, container, forward = build(
        DEPLOYMENTS[name], tmp_path / "pod", servers["secret"], servers["addresses"]
    )
    assert any(k.endswith("_SERVICE_HOST") and k.startswith("MAILROOM") for k in spec.env), "no service links"
    with pod.running(spec, tmp_path / "pod", forward) as running:
        _wait_ready(running, container)
        if name.endswith("watcher"):
            # the pod does its job: a reply reaches the queue the ConfigMap names
            mailbox = container["_config"]["mailboxes"][0]
            account = servers["dovecot"].account(mailbox["username"])
            append_messages(
                account.host, account.port, account.username, servers["dovecot"].users[account.username],
                [make_message(1, to=mailbox["address"].replace("%{key}", "key-1"))],
            )  # fmt: skip
            client: redis.Redis = servers["redis"].client()
            deadline = time.monotonic() + 30
            while client.llen(f"rq:queue:{mailbox['queue']}") < 1:
                assert time.monotonic() < deadline, f"no job queued:\n{running.log()}"
                time.sleep(0.2)
            # what Prometheus scrapes from the same port: the alerts' mailbox and queue metrics
            metrics = running.get(_container_port(container, "http"), "/metrics").decode()
            assert f'mailroom_mailbox_watching{{mailbox="{mailbox["name"]}"}} 1.0' in metrics
            assert "mailroom_redis_up 1.0" in metrics
        else:
            # the pod does its job: a message injected with kubectl-exec-style `mailroom inject -` is handled
            message = make_message(2, to="incoming+key-2@example.com").decode()
            injected = running.exec([spec.argv[0], "inject", "-"], stdin=message)
            assert injected.returncode == 0, injected.stdout + injected.stderr
            deadline = time.monotonic() + 60
            while "email_handled" not in running.log():
                assert time.monotonic() < deadline, f"not handled:\n{running.log()}"
                time.sleep(0.3)
            assert "key-2" in running.log()
        grace = float(container["_grace"])
        started = time.monotonic()
        code = running.stop(grace)
        took = time.monotonic() - started
    log = running.log()
    assert code == 0, f"exit {code} after SIGTERM (grace {grace} s, took {took:.1f} s):\n{log}"
    assert "Traceback" not in log and "config error" not in log, log


def test_the_pod_can_write_only_its_empty_dirs(servers, tmp_path) -> None:
    """The container's user can read its config and Secret, and write nowhere but the emptyDir."""
    spec, _, forward = build(DEPLOYMENTS["mailroom-watcher"], tmp_path / "pod", servers["secret"],
                             servers["addresses"])  # fmt: skip
    probe = """
import json, os, sys
result = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()), "writable": []}
for d in sys.argv[1:]:
    try:
        with open(os.path.join(d, ".pod-write-probe"), "w") as f:
            f.write("x")
        result["writable"].append(d)
    except OSError:
        pass
result["secret"] = open("/run/secrets/mailroom/imap-password").read().strip() != ""
result["config"] = "mailboxes" in open(os.environ["MAILROOM_CONFIG"]).read()
print(json.dumps(result))
"""
    candidates = ["/", "/tmp", "/var/tmp", "/etc", "/etc/mailroom", "/run/secrets/mailroom", "/run",
                  str(pod.ROOT), str(Path(sys.executable).parents[1]), "/home", "/dev/shm"]  # fmt: skip
    spec.argv = [sys.executable, "-c", probe, *candidates]
    with pod.running(spec, tmp_path / "pod", forward) as running:
        assert running.process.wait(timeout=60) == 0, running.log()
    result = json.loads(running.log().strip().splitlines()[-1])
    assert (result["uid"], result["gid"]) == (spec.uid, spec.gid)
    assert result["groups"] == spec.groups
    assert result["secret"] and result["config"]
    # /dev/shm is the runtime's, writable in every pod; everything the image holds is read-only
    assert result["writable"] == ["/tmp", "/dev/shm"]
