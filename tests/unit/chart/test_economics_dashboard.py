"""The economics dashboard (issue 19, item 4): registered with the others (so generated and
checked with them), and it shows what the issue asks for: cost per million tokens
(provisioned and utilised), tokens per joule and spend per tenant, by region with GPU and
Neuron side by side, from the economics recording rules only."""

from __future__ import annotations

import json
import re

import yaml

from deploy.monitoring import economics_dashboard
from tests.unit.chart.chart_tools import MONITORING
from tools.dashboards import DASHBOARDS


def _targets() -> dict[str, list[str]]:
    doc = economics_dashboard.economics()
    return {
        p["title"]: [t["expr"] for t in p["targets"]] for p in doc["panels"] if p["type"] != "row"
    }


def test_it_is_generated_with_the_others() -> None:
    assert DASHBOARDS[economics_dashboard.NAME] is economics_dashboard.economics
    shipped = json.loads((MONITORING / "dashboards" / "economics.json").read_text())
    assert shipped == economics_dashboard.economics()


def test_it_shows_what_the_issue_asks_for() -> None:
    titles = list(_targets())
    for wanted in (
        "Cost per million tokens by region and accelerator (provisioned)",
        "Cost per million tokens by region and accelerator (utilised)",
        "Tokens per joule by region and accelerator",
        "Spend per tenant",
    ):
        assert wanted in titles
    # GPU versus Neuron side by side: one series per region and accelerator kind.
    for title in titles:
        if "region and accelerator" in title:
            (expr,) = _targets()[title]
            assert "by (region, accelerator_kind)" in expr or "accelerator_kind)" in expr, title


def test_it_reads_the_economics_recording_rules() -> None:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    (group,) = [g for g in doc["groups"] if g["name"] == "inference-factory.economics.recording"]
    recorded = {r["record"] for r in group["rules"]}
    used = {
        m
        for exprs in _targets().values()
        for e in exprs
        for m in re.findall(r"factory:\w+:\w+|factory:\w+", e)
    }
    assert used, "the dashboard reads recorded series"
    assert used <= recorded
