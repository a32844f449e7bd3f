"""deploy/monitoring/alerts.yaml through promtool: the rules check, the unit tests pass, and
every alert has a test in which it fires and one in which it stays quiet; every alert links
a runbook section that exists; the operator's and router's targets and the router's 5xx
ratio are watched."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from tests.unit.chart.chart_tools import MONITORING, ROOT

RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/inference-factory/inference-factory/blob/main/docs/runbooks.md#"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (Debian package prometheus)"
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=300, check=False, cwd=MONITORING
    )


def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", "alerts.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_test_rules() -> None:
    files = sorted(str(p.relative_to(MONITORING)) for p in (MONITORING / "tests").glob("*.yaml"))
    assert files
    done = _promtool("test", "rules", *files)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    alerts = {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in (MONITORING / "tests").glob("*.yaml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts - fired == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"


def test_every_alert_has_runbook_text() -> None:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
                assert {"summary", "description", "runbook"} <= set(rule["annotations"])


def _alerts() -> list[dict[str, object]]:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def _github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    anchors = {
        _github_anchor(line[3:])
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    for rule in _alerts():
        url = rule["annotations"]["runbook_url"]  # type: ignore[index]
        assert url.startswith(RUNBOOK_BASE), rule["alert"]
        assert url.removeprefix(RUNBOOK_BASE) in anchors, (rule["alert"], url)


def test_operator_and_router_targets_and_5xx_are_alerted() -> None:
    exprs = {r["alert"]: " ".join(str(r["expr"]).split()) for r in _alerts()}
    for job in ("factory-operator", "factory-router"):
        assert any(e == f'up{{job="{job}"}} == 0' for e in exprs.values()), job
        assert any(e == f'absent(up{{job="{job}"}})' for e in exprs.values()), job
    ratio = exprs["InferenceRouter5xxRatioHigh"]
    assert 'factory_router_requests_total{status=~"5.."}' in ratio
