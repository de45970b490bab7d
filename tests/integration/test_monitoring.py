"""deploy/monitoring: the alert rules load and pass their unit tests in promtool, and the
alerts and the Grafana dashboard query only metrics that docs/metrics.md lists.

promtool comes from Debian's `prometheus` package (README "Run the tests", .ci/run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.relay import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# Series every Prometheus target has, or that prometheus-client's default collectors
# export (docs/metrics.md, "Process").
STANDARD = {"up"}
STANDARD_PREFIXES = ("process_", "python_")
# PromQL words that are not metric names.
PROMQL = {
    "sum", "min", "max", "avg", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "vector", "or", "and", "unless", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "label_values", "humanizePercentage", "topk", "abs",
    "clamp_min", "delta", "deriv", "time",
}  # fmt: skip


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: apt-get install prometheus (README, Run the tests)"
    return path


def run(*args: str, cwd: Path = MONITORING) -> str:
    done = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def documented_series() -> set[str]:
    names: set[str] = set()
    for name, kind in re.findall(
        r"^\|\s*`(phi_relay_[a-z_]+)`\s*\|\s*(\w+)", METRICS_DOC.read_text(), re.M
    ):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, templates)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {w for w in words if w not in PROMQL and not re.fullmatch(r"\d+[smhdwy]?", w)}


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    dash = json.loads(DASHBOARD.read_text())
    out: dict[str, str] = {}
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} / {target['refId']}"] = target["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"]
            m = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert m, query
            out[f"variable {var['name']}"] = m.group(1)
    return out


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert "SUCCESS: 11 rules found" in run("check", "rules", RULES.name)
    out = run("test", "rules", RULE_TESTS.name)
    assert "SUCCESS" in out
    # Every alert has at least one unit test that expects it to fire.
    tested = set(
        re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", RULE_TESTS.read_text())
    )
    assert tested == set(alert_exprs()), set(alert_exprs()) ^ tested


def test_a_broken_alert_fails_its_unit_test(tmp_path: Path) -> None:
    # The unit tests can fail: raise one threshold and promtool must say so.
    broken = RULES.read_text().replace(
        "increase(phi_relay_audit_errors_total[5m]) > 0",
        "increase(phi_relay_audit_errors_total[5m]) > 5",
    )
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "PhiRelayAuditWriteFailing" in done.stdout + done.stderr


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_queries_use_only_documented_metrics(source: str) -> None:
    exprs = alert_exprs() if source == "alerts" else dashboard_exprs()
    assert exprs
    known = documented_series()
    for where, expr in exprs.items():
        names = metric_names(expr)
        assert names, (where, expr)
        for name in names:
            ok = name in known or name in STANDARD or name.startswith(STANDARD_PREFIXES)
            assert ok, f"{where}: {name} is not a metric in docs/metrics.md"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses expressions in rule files: each panel query becomes a recording rule.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, expr in enumerate(dashboard_exprs().values())
    ]
    (tmp_path / "dashboard-rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    assert f"SUCCESS: {len(rules)} rules found" in run(
        "check", "rules", "dashboard-rules.yml", cwd=tmp_path
    )
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dash["uid"] == "phi-relay"
