"""Run a Deployment's container on this machine the way the kubelet and a container runtime would.

What a pod gets, and how it is reproduced here (root needed; util-linux and iproute2):

- the image's ENTRYPOINT/CMD and ENV (read from the Dockerfile), overridden by the container's
  ``command``/``args`` and ``env``/``envFrom``, with ``$(VAR)`` expanded as the kubelet does;
- service-link variables in the kubelet's exact format (pkg/kubelet/envvars) for the Services given;
- its own network namespace (``unshare --net``): the container's ports are its own, so the declared
  ``containerPort`` is used as it is; servers outside are reached through forwarders the test opens
  inside that namespace (a socket keeps the namespace it was created in);
- its own mount namespace (``unshare --mount``): ConfigMap and Secret volumes as files at their
  ``mountPath`` (in the kubelet's ``..data`` symlink layout, with ``defaultMode``, group ``fsGroup``),
  a tmpfs for each ``emptyDir``, an ``/etc/hosts`` naming the test's servers, and every other mount
  remounted read-only (``readOnlyRootFilesystem``); ``/proc``, ``/sys`` and ``/dev`` stay as in a pod;
- the declared ``runAsUser``/``runAsGroup``/``fsGroup`` (``setpriv``), no new privileges, no capabilities.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES_DIR = ROOT / "config" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
# What the python:3.11-slim base image sets besides the Dockerfile's own ENV (PATH comes from the venv).
BASE_IMAGE_ENV = {"LANG": "C.UTF-8"}
KEEP_WRITABLE = ("/proc", "/sys", "/dev")  # as in a pod: these are the runtime's, not the image's


# ---- manifests --------------------------------------------------------------------------------------


def kustomize_documents(directory: Path = KUBERNETES_DIR) -> list[dict[str, Any]]:
    """Every document of the kustomization's ``resources`` (plain files, as this repository has)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    documents = []
    for resource in kustomization["resources"]:
        documents += [d for d in yaml.safe_load_all((directory / resource).read_text()) if d]
    return documents


def of_kind(documents: Sequence[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


@dataclass(frozen=True)
class Image:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str]
    user: str | None
    healthcheck: tuple[str, ...] = ()  # HEALTHCHECK's CMD (exec form)


def dockerfile_image(path: Path = DOCKERFILE) -> Image:
    """ENTRYPOINT, CMD (exec form), ENV and USER of a single-stage Dockerfile."""
    text = re.sub(r"\\\n", " ", path.read_text())
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = {}
    user = None
    healthcheck: tuple[str, ...] = ()
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "ENTRYPOINT":
            entrypoint = tuple(yaml.safe_load(rest))
        elif instruction == "CMD":
            cmd = tuple(yaml.safe_load(rest))
        elif instruction == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
        elif instruction == "USER":
            user = rest.strip()
        elif instruction == "HEALTHCHECK" and " CMD " in f" {rest}":
            healthcheck = tuple(yaml.safe_load(f" {rest}".split(" CMD ", 1)[1]))
    return Image(entrypoint, cmd, env, user, healthcheck)


def _env_name(name: str) -> str:
    return name.replace("-", "_").upper()


def service_link_env(service: Mapping[str, Any], cluster_ip: str) -> dict[str, str]:
    """The variables the kubelet gives every pod for a Service (FromServices + makeLinkVariables).

    The kubelet skips headless Services (clusterIP: None); this gives them a cluster IP anyway, so the
    test also covers a user who drops ``clusterIP: None``."""
    prefix = _env_name(service["metadata"]["name"])
    ports = service["spec"]["ports"]
    env = {f"{prefix}_SERVICE_HOST": cluster_ip, f"{prefix}_SERVICE_PORT": str(ports[0]["port"])}
    for port in ports:
        if port.get("name"):
            env[f"{prefix}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
    for i, port in enumerate(ports):
        protocol = port.get("protocol", "TCP")
        url = f"{protocol.lower()}://{cluster_ip}:{port['port']}"
        if i == 0:
            env[f"{prefix}_PORT"] = url
        port_prefix = f"{prefix}_PORT_{port['port']}_{protocol.upper()}"
        env[port_prefix] = url
        env[f"{port_prefix}_PROTO"] = protocol.lower()
        env[f"{port_prefix}_PORT"] = str(port["port"])
        env[f"{port_prefix}_ADDR"] = cluster_ip
    return env


def services_env(services: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Service links for ``services`` plus the API server's (``kubernetes``), as every pod gets them."""
    api = {"metadata": {"name": "kubernetes"}, "spec": {"ports": [{"name": "https", "port": 443}]}}
    env: dict[str, str] = {}
    for i, service in enumerate([api, *services]):
        env.update(service_link_env(service, f"10.96.0.{i + 1}"))
    return env


_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


def expand(value: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: known names replaced, unknown ones kept, ``$$`` -> ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(one, value)


def _data_of(kind_objects: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, str] | None:
    obj = kind_objects.get(name)
    if obj is None:
        return None
    return dict(obj.get("data") or {}) | dict(obj.get("stringData") or {})


def container_env(
    container: Mapping[str, Any],
    image: Image,
    configmaps: Mapping[str, Mapping[str, Any]],
    secrets: Mapping[str, Mapping[str, Any]],
    links: Mapping[str, str],
) -> dict[str, str]:
    """Image ENV, then service links, then envFrom, then env (later wins), as the kubelet builds it."""
    env = dict(image.env) | dict(links)
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        objects = configmaps if "configMapRef" in source else secrets
        data = _data_of(objects, ref["name"])
        if data is None:
            assert ref.get("optional"), f"envFrom {ref['name']} does not exist and is not optional"
            continue
        env.update({source.get("prefix", "") + key: value for key, value in data.items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
            continue
        ref = var["valueFrom"].get("secretKeyRef") or var["valueFrom"].get("configMapKeyRef")
        assert ref is not None, f"env {var['name']}: only secretKeyRef and configMapKeyRef are emulated"
        objects = secrets if "secretKeyRef" in var["valueFrom"] else configmaps
        data = _data_of(objects, ref["name"]) or {}
        if ref["key"] in data:
            env[var["name"]] = data[ref["key"]]
        else:
            assert ref.get("optional"), f"env {var['name']}: {ref['name']}/{ref['key']} is missing"
    return env


# ---- network namespace ------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000
_setns_lock = threading.Lock()


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def socket_in(pid: int) -> socket.socket:
    """A TCP socket in process ``pid``'s network namespace (setns affects only this thread)."""
    with _setns_lock, open(f"/proc/{pid}/ns/net") as target, open("/proc/thread-self/ns/net") as home:
        _setns(target.fileno())
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(home.fileno())


class Forwarder:
    """Listens on 127.0.0.1:``port`` inside a pod's network namespace; each connection is piped to
    ``target`` in ours (where the test's servers listen)."""

    def __init__(self, pid: int, port: int, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket_in(pid)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(16)
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                inside, _ = self._listener.accept()
            except OSError:
                return
            try:
                outside = socket.create_connection(self.target, timeout=10)
            except OSError:
                inside.close()
                continue
            outside.settimeout(None)
            self._sockets += [inside, outside]
            for source, sink in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def http_get(pid: int, port: int, path: str, timeout: float) -> tuple[int, bytes] | None:
    """What the kubelet's httpGet probe (or Prometheus) sees: status and body, or None if nothing answered."""

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket_in(pid)
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", port))
            self.sock = sock

    connection = Connection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"User-Agent": "kube-probe/1.30"})
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return None
    finally:
        connection.close()


# ---- the pod ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Volume:
    mount_path: str
    source: Path | None  # a directory (ConfigMap, Secret) or file to bind; None: an emptyDir (tmpfs)
    read_only: bool


@dataclass
class PodSpec:
    """Everything needed to start one container of a Deployment."""

    argv: list[str]
    env: dict[str, str]
    volumes: list[Volume]
    uid: int
    gid: int
    groups: list[int]
    hosts: dict[str, str] = field(default_factory=dict)  # name -> address, for /etc/hosts
    # Paths the container's process must see and read, as the image has them (the Python, the venv, the
    # source): a 0700 ancestor (a pyenv Python under /root) is covered, in the pod's view only, by a
    # tmpfs holding just these; one under an emptyDir's mountPath (a checkout in /tmp) is kept visible.
    reachable: list[Path] = field(default_factory=list)


def stage_volume(directory: Path, data: Mapping[str, str], mode: int, gid: int | None) -> Path:
    """Files the way the kubelet's AtomicWriter lays them out: ``..data`` -> a timestamped dir, and one
    symlink per key into ``..data``; files get ``mode`` and group ``gid`` (fsGroup)."""
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.000000001")
    payload = directory / stamp
    payload.mkdir(parents=True)
    for key, value in data.items():
        path = payload / key
        path.write_text(value)
        path.chmod(mode)
        if gid is not None:
            os.chown(path, 0, gid)
    directory.chmod(0o755)
    if gid is not None:
        os.chown(directory, 0, gid)
        os.chown(payload, 0, gid)
    payload.chmod(0o755)
    (directory / "..data").symlink_to(stamp)
    for key in data:
        (directory / key).symlink_to(f"..data/{key}")
    return directory


def _script(spec: PodSpec, work: Path) -> str:
    """The shell run as root inside the new namespaces; it execs the container's process."""
    lines = ["set -eu", "ip link set lo up"]
    overlaid: list[str] = []
    for i, volume in enumerate(spec.volumes):
        target = Path(volume.mount_path)
        ancestor = target
        while not ancestor.exists():
            ancestor = ancestor.parent
        if ancestor != target and not any(target.is_relative_to(o) for o in overlaid):
            # a mountPath the host lacks: an overlay over its nearest existing parent, to make it in
            assert ancestor != Path("/"), f"{target}: would overlay /"
            upper, workdir = work / f"overlay{i}" / "upper", work / f"overlay{i}" / "work"
            upper.mkdir(parents=True)
            workdir.mkdir(parents=True)
            options = f"lowerdir={ancestor},upperdir={upper},workdir={workdir}"
            lines.append(f"mount -t overlay overlay -o {options} {ancestor}")
            overlaid.append(str(ancestor))
        if volume.source is not None and volume.source.is_file():  # a single file (docker -v file:file)
            lines.append(f"mkdir -p {shlex.quote(str(target.parent))}")
            lines.append(f"[ -e {shlex.quote(str(target))} ] || touch {shlex.quote(str(target))}")
        else:
            lines.append(f"mkdir -p {shlex.quote(str(target))}")
    if spec.hosts:
        hosts = work / "hosts"
        hosts.write_text(
            "127.0.0.1 localhost\n" + "".join(f"{addr} {name}\n" for name, addr in spec.hosts.items())
        )
        hosts.chmod(0o644)
        lines.append(f"mount --bind {hosts} /etc/hosts")
    # bind mounts first: their sources may live under a path an emptyDir covers next (/tmp)
    for volume in spec.volumes:
        if volume.source is not None:
            lines.append(f"mount --bind {shlex.quote(str(volume.source))} {shlex.quote(volume.mount_path)}")
    writable = []
    covers: list[tuple[Path, str]] = []  # tmpfs mounts that hide what is below them
    for volume in spec.volumes:
        if volume.source is None:
            covers.append((Path(volume.mount_path), f"mode=2777,gid={spec.groups[0] if spec.groups else 0}"))
            if not volume.read_only:
                writable.append(volume.mount_path)
    for path in spec.reachable:
        hidden = next((a for a in reversed(path.parents) if not a.stat().st_mode & stat.S_IXOTH), None)
        if hidden is not None and all(hidden != c for c, _ in covers):
            covers.append((hidden, "mode=0755"))
    moves = []
    for i, (cover, options) in enumerate(covers):
        # built aside, the reachable paths below it bound in, then moved over its place in one step
        aside = work / f"cover{i}"
        aside.mkdir()
        lines.append(f"mount -t tmpfs -o {options},size=64m tmpfs {aside}")
        for path in _outermost(spec.reachable):
            if path.is_relative_to(cover):
                inside = aside / path.relative_to(cover)
                lines.append(f"mkdir -p {shlex.quote(str(inside))}")
                lines.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(inside))}")
        moves.append((work.is_relative_to(cover), f"mount --move {aside} {shlex.quote(str(cover))}"))
    # the cover hiding this work directory (/tmp) moves last: the others are still reachable until then
    lines += [move for _, move in sorted(moves, key=lambda m: m[0])]
    keep = "|".join([*(f"{p}|{p}/*" for p in KEEP_WRITABLE), *writable])
    lines.append(
        "awk '{print $5}' /proc/self/mountinfo | while read -r mp; do "
        f'case "$mp" in {keep}) ;; *) mount -o remount,bind,ro "$mp" 2>/dev/null || true ;; esac; done'
    )
    lines += [
        "echo ready",
        "read -r go",
        f"cd / && exec {shlex.join(as_container_user(spec, spec.argv))} </dev/null >&2",
    ]
    return "\n".join(lines)


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """``paths`` without those inside another one of them."""
    return [p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths)]


def as_container_user(spec: PodSpec, argv: Sequence[str]) -> list[str]:
    """``argv`` as the container's user, groups and environment, without privileges."""
    groups = ",".join(str(g) for g in spec.groups) if spec.groups else None
    privileges = [
        "setpriv",
        f"--reuid={spec.uid}",
        f"--regid={spec.gid}",
        f"--groups={groups}" if groups else "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]
    return [*privileges, "env", "-i", *(f"{k}={v}" for k, v in spec.env.items()), *argv]


@dataclass
class Pod:
    process: subprocess.Popen[bytes]
    log_path: Path
    forwarders: list[Forwarder]
    spec: PodSpec

    def exec(
        self, argv: Sequence[str], timeout: float = 60, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the running container (its namespaces, user, environment): kubectl exec."""
        return subprocess.run(
            [
                "nsenter",
                f"--target={self.pid}",
                "--net",
                "--mount",
                "--wd=/",
                *as_container_user(self.spec, argv),
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def probe(self, port: int, path: str, timeout: float = 5.0) -> int | None:
        answer = http_get(self.pid, port, path, timeout)
        return answer[0] if answer is not None else None

    def get(self, port: int, path: str, timeout: float = 5.0) -> bytes:
        answer = http_get(self.pid, port, path, timeout)
        assert answer is not None and answer[0] == 200, f"GET {path}: {answer}"
        return answer[1]

    def stop(self, grace: float) -> int | None:
        """SIGTERM, then wait up to ``grace`` seconds (terminationGracePeriodSeconds); None if it had
        to be killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None
        finally:
            for forwarder in self.forwarders:
                forwarder.close()


@contextlib.contextmanager
def running(spec: PodSpec, work: Path, forward: Mapping[int, tuple[str, int]]) -> Iterator[Pod]:
    """Start the container; ``forward`` maps ports on the pod's loopback to servers on ours."""
    for tool in ("unshare", "setpriv", "ip", "mount"):
        assert shutil.which(tool), f"{tool} is needed (util-linux, iproute2)"
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "pod.log"
    with open(log_path, "wb") as log:
        # stdout says "ready" once the namespaces are set up; the container's output goes to stderr (log)
        process = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", _script(spec, work)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    pod = Pod(process, log_path, [], spec)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        process.stdout.close()
        assert line == b"ready\n", f"the pod's namespaces could not be set up:\n{pod.log()}"
        pod.forwarders += [Forwarder(process.pid, port, target) for port, target in forward.items()]
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.close()
        yield pod
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for forwarder in pod.forwarders:
            forwarder.close()
