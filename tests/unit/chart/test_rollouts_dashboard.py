"""The rollouts dashboard (canary rollouts, docs/rollouts.md): registered with the others (so
generated and checked with them: metric names, label set, promtool parse in
test_chart_sources.py), shipped as generated, and it shows what on-call needs: the phase per
factory, the step's age at the stuck alert's level, the canary weight per pool, and canary
against stable per revision from the router's series the contract names."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from deploy.monitoring import rollouts_dashboard
from factory_contract import metrics as contract
from tests.unit.chart.chart_tools import CHART, MONITORING
from tools.dashboards import DASHBOARDS

PER_REVISION = (
    "Error ratio by revision",
    "TTFT p95 by revision",
    "ITL p95 by revision",
    "Generation throughput by revision",
    "Attempts/s by revision",
)


def _panels() -> dict[str, dict[str, Any]]:
    doc = rollouts_dashboard.rollouts()
    return {p["title"]: p for p in doc["panels"] if p["type"] != "row"}


def _exprs(title: str) -> list[str]:
    return [t["expr"] for t in _panels()[title]["targets"]]


def test_it_is_generated_with_the_others() -> None:
    assert DASHBOARDS[rollouts_dashboard.NAME] is rollouts_dashboard.rollouts
    for folder in (MONITORING / "dashboards", CHART / "files" / "dashboards"):
        shipped = json.loads((folder / "rollouts.json").read_text())
        assert shipped == rollouts_dashboard.rollouts()


def test_it_shows_where_each_rollout_is() -> None:
    (phase,) = _exprs("Rollout phase by factory")
    assert "factory_operator_rollout_phase" in phase and "phase)" in phase
    (weight,) = _exprs("Canary weight by pool")
    assert "factory_operator_rollout_canary_weight" in weight
    assert _panels()["Canary weight by pool"]["fieldConfig"]["defaults"]["unit"] == "percent"
    (rollbacks,) = _exprs("Rollbacks by failed check (1h)")
    assert "factory_operator_rollout_rollbacks_total" in rollbacks and "check)" in rollbacks


def test_step_age_is_drawn_at_the_stuck_alerts_level() -> None:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    (stuck,) = [
        r["expr"] for g in doc["groups"] for r in g["rules"]
        if r.get("alert") == "InferenceFactoryRolloutStuck"
    ]  # fmt: skip
    minutes, seconds = re.search(r"> (\d+) \* (\d+)\s", stuck).groups()  # type: ignore[union-attr]
    level = int(minutes) * int(seconds)
    assert level == rollouts_dashboard.STEP_STUCK_SECONDS
    panel = _panels()["Step age by factory"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps if s["value"] is not None] == [level]
    # A 0 timestamp (no step recorded) is left out here as in the alert.
    (age,) = _exprs("Step age by factory")
    assert "factory_operator_rollout_step_entered_timestamp_seconds" in age and "> 0)" in age


def test_canary_and_stable_side_by_side_per_revision() -> None:
    for title in PER_REVISION:
        panel = _panels()[title]
        for target in panel["targets"]:
            assert target["legendFormat"] == "{{pool}} {{revision}}", title
            assert "by (namespace, factory, pool, revision" in target["expr"], title
            assert 'pool=~"$pool"' in target["expr"], title
    used = {
        m
        for title in PER_REVISION
        for e in _exprs(title)
        for m in re.findall(r"factory_router_backend_\w+", e)
    }
    contract_names = {
        contract.BACKEND_ATTEMPTS,
        contract.BACKEND_COMPLETION_TOKENS,
        contract.BACKEND_STREAM_SECONDS,
        f"{contract.BACKEND_TTFT_SECONDS}_bucket",
        f"{contract.BACKEND_ITL_SECONDS}_bucket",
    }
    assert used == contract_names
    (errors,) = _exprs("Error ratio by revision")
    assert 'outcome="ok"' in errors


def test_template_variables() -> None:
    doc = rollouts_dashboard.rollouts()
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"namespace", "factory", "region", "pool"} <= set(variables)
    pool = variables["pool"]
    # The pools of the selected namespaces, factories and regions; "All" lists them (no
    # catch-all value), so the region selection narrows the router's series too.
    for name in ("namespace", "factory", "region"):
        assert f'=~"${name}"' in pool["definition"]
    assert "allValue" not in pool
    for title, panel in _panels().items():
        for target in panel["targets"]:
            assert 'namespace=~"$namespace"' in target["expr"], title
            assert 'factory=~"$factory"' in target["expr"], title
