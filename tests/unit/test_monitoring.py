"""The alerts (config/kubernetes/prometheusrule.yaml) and the Grafana dashboard (config/grafana/) query
metrics mailroom exports, the rules pass ``promtool check rules``, every alert passes its unit tests
(``promtool test rules`` over tests/data/prometheus/alerts.test.yml), and every dashboard query parses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from mailroom.metrics import MailboxCollector

ROOT = Path(__file__).resolve().parents[2]
RULE = ROOT / "config" / "kubernetes" / "prometheusrule.yaml"
DASHBOARD = ROOT / "config" / "grafana" / "mailroom-dashboard.json"
ALERT_TESTS = ROOT / "tests" / "data" / "prometheus" / "alerts.test.yml"
METRIC = re.compile(r"\bmailroom_[a-z_]+\b")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make system-packages` installs Debian's prometheus package"
    return path


def rule_groups() -> dict[str, Any]:
    rule = yaml.safe_load(RULE.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    return {"groups": rule["spec"]["groups"]}


def alert_exprs() -> list[str]:
    return [r["expr"] for g in rule_groups()["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def exported_metrics() -> set[str]:
    """Every series name mailroom/metrics.py can export (histograms as _bucket, _sum and _count)."""
    source = (ROOT / "mailroom" / "metrics.py").read_text()
    names = set(re.findall(r'"(mailroom_[a-z_]+)"', source))
    histograms = set(re.findall(r'Histogram\(\s*"(mailroom_[a-z_]+)"', source))
    return names | {f"{h}{suffix}" for h in histograms for suffix in ("_bucket", "_sum", "_count")}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def test_the_rules_pass_promtool_check_rules(tmp_path: Path) -> None:
    (tmp_path / "mailroom-rules.yml").write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    result = run(promtool(), "check", "rules", "mailroom-rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_passes_its_promtool_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "mailroom-rules.yml").write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    result = run(promtool(), "test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    alerts = {r["alert"] for g in rule_groups()["groups"] for r in g["rules"]}
    assert alerts == tested, f"alerts without a unit test: {alerts - tested}"


def test_the_alerts_cover_what_operators_need() -> None:
    alerts = {r["alert"] for g in rule_groups()["groups"] for r in g["rules"]}
    assert {
        "MailroomMailboxNotWatched",
        "MailroomQueueGrowing",
        "MailroomJobsFailing",
        "MailroomRedisDown",
        "MailroomRedisErrors",
        "MailroomLeaseChurn",
    } <= alerts
    (not_watched,) = [
        r for g in rule_groups()["groups"] for r in g["rules"] if r["alert"] == "MailroomMailboxNotWatched"
    ]
    assert not_watched["for"] == "5m"


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_queried_metric_exists(source: str) -> None:
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    assert exprs
    queried = {name for expr in exprs for name in METRIC.findall(expr)}
    missing = queried - exported_metrics()
    assert not missing, f"{source} query metrics mailroom does not export: {sorted(missing)}"


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each panel query as a recording rule (Grafana's variables given plain values)."""
    rules = [
        {
            "record": f"mailroom_dashboard:q{i}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$namespace", ".*"),
        }
        for i, expr in enumerate(dashboard_exprs())
    ]
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    result = run(promtool(), "check", "rules", "dashboard.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_panels_have_ids_and_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])


def test_mailbox_collector_says_which_configured_mailboxes_are_watched() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        MailboxCollector(["support", "billing", "sales"], lambda: {"support": True, "sales": False})
    )
    text = generate_latest(registry).decode()
    assert 'mailroom_mailbox_watching{mailbox="support"} 1.0' in text
    assert 'mailroom_mailbox_watching{mailbox="billing"} 0.0' in text
    assert 'mailroom_mailbox_watching{mailbox="sales"} 0.0' in text
