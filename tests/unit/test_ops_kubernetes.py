"""config/kubernetes/: built-in kinds pass kubernetes-validate (strict, a fixed Kubernetes version), the
CRDs (ServiceMonitor, PrometheusRule, KEDA's ScaledObject) are checked structurally, the ConfigMap's
embedded config passes check-config, and what a real cluster needs is there: a versioned image, a worker
grace period covering job_timeout, spread replicas, optional autoscaling components."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner

from mailroom.cli import cli
from mailroom.config import DEFAULT_QUEUE, Settings, WorkerConfig

kubernetes_validate = pytest.importorskip("kubernetes_validate")

DIR = Path(__file__).resolve().parents[2] / "config" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
BUILT_IN = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


def documents() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted(DIR.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


@pytest.mark.parametrize(("name", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_is_valid(name: str, doc: dict) -> None:
    if doc["kind"] in BUILT_IN:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    elif doc["kind"] == "PrometheusRule":  # its rules: tests/unit/test_monitoring.py (promtool)
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["spec"]["groups"] and all(g["rules"] for g in doc["spec"]["groups"])
    else:
        assert doc["kind"] == "ServiceMonitor" and doc["apiVersion"] == "monitoring.coreos.com/v1"
        service = by_kind("Service")[0]
        assert doc["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        port_names = {p["name"] for p in service["spec"]["ports"]}
        assert [e["port"] for e in doc["spec"]["endpoints"]] == ["http"] and "http" in port_names
        assert doc["spec"]["endpoints"][0]["path"] == "/metrics"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DIR / "kustomization.yaml").read_text())
    files = {p.name for p in DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_deployments_probe_the_health_endpoints_as_non_root() -> None:
    config = yaml.safe_load(by_kind("ConfigMap")[0]["data"]["mailroom.yml"])
    deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    assert set(deployments) == {"mailroom-watcher", "mailroom-worker"}
    assert deployments["mailroom-watcher"]["spec"]["replicas"] >= 2 and config["lease_ttl"]
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        (container,) = pod["containers"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["ports"][0]["containerPort"] == config["http_port"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert all(Path(m["password_file"]).parent.as_posix() in mounts for m in config["mailboxes"])
    selectors = [p["spec"]["selector"]["matchLabels"] for p in by_kind("PodDisruptionBudget")]
    assert all(
        any(s.items() <= d["spec"]["template"]["metadata"]["labels"].items() for s in selectors)
        for d in deployments.values()
    )


def test_the_configmap_config_passes_check_config(tmp_path: Path) -> None:
    config = tmp_path / "mailroom.yml"
    config.write_text(by_kind("ConfigMap")[0]["data"]["mailroom.yml"])
    password = tmp_path / "imap-password"
    password.write_text("not-the-real-one\n")
    env = {"MAILROOM_MAILBOXES__0__PASSWORD_FILE": str(password)}  # the Secret mount, here
    result = CliRunner().invoke(cli, ["--config", str(config), "check-config"], env=env)
    assert result.exit_code == 0, result.output
    assert "lease_ttl: 30" in result.output and "not-the-real-one" not in result.output


# ---- a real cluster (issue 10, part 6) ---------------------------------------------------------------

ROOT = DIR.parents[1]


def _config() -> dict:
    return yaml.safe_load(by_kind("ConfigMap")[0]["data"]["mailroom.yml"])


def _deployments() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in by_kind("Deployment")}


def test_the_image_is_the_released_version_set_by_kustomize() -> None:
    kustomization = yaml.safe_load((DIR / "kustomization.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    (image,) = kustomization["images"]
    assert image["newTag"] == version
    for deployment in _deployments().values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image["name"], "the tag comes from kustomization.yaml's images:"


def test_the_worker_grace_period_covers_job_timeout() -> None:
    """Kubernetes SIGKILLs the pod after its grace period: handlers must have finished by then."""
    config = _config()  # its secret files do not exist here: read the two fields, defaults from the model
    job_timeout = config.get("job_timeout", Settings.model_fields["job_timeout"].default)
    worker = WorkerConfig.model_validate(config.get("worker", {}))
    shutdown_timeout = job_timeout if worker.shutdown_timeout is None else worker.shutdown_timeout
    pod = _deployments()["mailroom-worker"]["spec"]["template"]["spec"]
    assert shutdown_timeout >= job_timeout, "a stop would cut handlers off mid-call"
    assert pod["terminationGracePeriodSeconds"] >= shutdown_timeout + 10


def test_replicas_spread_over_nodes_and_zones_and_need_no_service_links() -> None:
    for deployment in _deployments().values():
        pod = deployment["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        for constraint in pod["topologySpreadConstraints"]:
            assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        assert pod["enableServiceLinks"] is False  # tidy only: test_pod_fidelity runs with links


SCALING = DIR / "scaling"


def _component(name: str) -> tuple[dict, list[dict]]:
    kustomization = yaml.safe_load((SCALING / name / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    docs = [
        d
        for r in kustomization["resources"]
        for d in yaml.safe_load_all((SCALING / name / r).read_text())
        if d
    ]
    return kustomization, docs


def test_the_scaling_components_are_optional_and_drop_the_worker_replicas() -> None:
    kustomization = yaml.safe_load((DIR / "kustomization.yaml").read_text())
    assert not kustomization.get("components")
    for name in ("keda", "hpa"):
        component, _ = _component(name)
        (patch,) = component["patches"]
        assert patch["target"] == {"kind": "Deployment", "name": "mailroom-worker"}
        assert yaml.safe_load(patch["patch"]) == [{"op": "remove", "path": "/spec/replicas"}]


def test_the_keda_scaled_object_watches_every_rq_queue_of_the_config() -> None:
    _, (scaled,) = _component("keda")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "mailroom-worker"
    assert scaled["spec"]["minReplicaCount"] >= 2  # the PodDisruptionBudget keeps one
    queues = sorted({m.get("queue", DEFAULT_QUEUE) for m in _config()["mailboxes"]})
    triggers = scaled["spec"]["triggers"]
    assert sorted(t["metadata"]["listName"] for t in triggers) == [f"rq:queue:{q}" for q in queues]
    redis_url = urlsplit(_config()["redis_url"])
    for trigger in triggers:
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["address"] == f"{redis_url.hostname}:{redis_url.port}"
        assert trigger["metadata"]["databaseIndex"] == redis_url.path.strip("/")
        assert int(trigger["metadata"]["listLength"]) > 0


def test_the_hpa_is_valid_and_scales_the_worker_on_queue_depth() -> None:
    _, (hpa,) = _component("hpa")
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mailroom-worker"
    assert hpa["spec"]["minReplicas"] >= 2
    external = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    assert [e["metric"]["name"] for e in external] == ["mailroom_queue_depth"]


@pytest.mark.parametrize("components", [[], ["scaling/keda"], ["scaling/hpa"]])
def test_kustomize_builds_it(tmp_path, components: list[str]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: the structural tests above are the check")
    shutil.copytree(DIR, tmp_path / "k")
    if components:
        with (tmp_path / "k" / "kustomization.yaml").open("a") as f:
            f.write(yaml.safe_dump({"components": components}))
    result = subprocess.run(
        [kubectl, "kustomize", str(tmp_path / "k")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for doc in docs:
        assert doc["metadata"].get("namespace") == "mailroom"
        if doc["kind"] == "Deployment":
            assert doc["spec"]["template"]["spec"]["containers"][0]["image"] == f"mailroom:{version}"
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    worker = next(d for d in docs if d["metadata"]["name"] == "mailroom-worker" and d["kind"] == "Deployment")
    assert ("replicas" in worker["spec"]) == (not components)
