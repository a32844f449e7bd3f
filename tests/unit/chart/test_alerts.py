"""deploy/monitoring/alerts.yaml through promtool: the rules check, the unit tests pass, and
every alert has a test in which it fires and one in which it stays quiet."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from tests.unit.chart.chart_tools import MONITORING


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
