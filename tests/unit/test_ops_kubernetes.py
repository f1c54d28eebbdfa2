"""config/kubernetes/: built-in kinds pass kubernetes-validate (strict, a fixed Kubernetes version), the
ServiceMonitor CRD is checked structurally, and the ConfigMap's embedded config passes check-config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mailroom.cli import cli

kubernetes_validate = pytest.importorskip("kubernetes_validate")

DIR = Path(__file__).resolve().parents[2] / "config" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
BUILT_IN = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}


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
