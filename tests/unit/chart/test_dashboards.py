"""The Grafana dashboards as shipped (deploy/monitoring/dashboards/*.json, parsed): rates over
`$__rate_interval`, the SLO and alert levels drawn as thresholds (the same numbers as the
alerts), links between the dashboards, a namespace filter on every fleet query."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart.chart_tools import MONITORING

DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))
RANGE = re.compile(r"\[([^\]]+)\]")
TAG = "inference-factory"


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _panels(path: Path) -> list[dict[str, Any]]:
    return [p for p in _load(path)["panels"] if p["type"] != "row"]


def _alert(name: str) -> str:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return next(
        " ".join(r["expr"].split()) for g in doc["groups"] for r in g["rules"]
        if r.get("alert") == name
    )  # fmt: skip


def _steps(panel: dict[str, Any]) -> list[float]:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    return [s["value"] for s in steps if s["value"] is not None]


def test_there_are_dashboards() -> None:
    assert [p.stem for p in DASHBOARDS] == [
        "economics", "fleet-overview", "region-slos", "residency", "rollouts"
    ]  # fmt: skip


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_rates_use_the_rate_interval(path: Path) -> None:
    """A fixed window only where the panel says so in its title (e.g. burn rate over 1h)."""
    for panel in _panels(path):
        for target in panel["targets"]:
            for window in RANGE.findall(target["expr"]):
                assert window == "$__rate_interval" or f"{window})" in panel["title"], (
                    path.stem, panel["title"], target["expr"]
                )  # fmt: skip


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_link_each_other(path: Path) -> None:
    doc = _load(path)
    assert TAG in doc["tags"]
    (link,) = doc["links"]
    assert link["type"] == "dashboards" and link["tags"] == [TAG]
    assert link["includeVars"] and link["keepTime"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_namespace_variable_filters_every_fleet_query(path: Path) -> None:
    doc = _load(path)
    names = [v["name"] for v in doc["templating"]["list"]]
    assert "namespace" in names
    fleet = re.compile(
        r"(vllm:\w+|factory_operator_(?:factory_condition|pool_replicas))(\{[^}]*\})?"
    )
    for panel in _panels(path):
        for target in panel["targets"]:
            for metric, selector in fleet.findall(target["expr"]):
                assert 'namespace=~"$namespace"' in selector, (path.stem, panel["title"], metric)


def _panel(stem: str, title: str) -> dict[str, Any]:
    return next(p for p in _panels(MONITORING / "dashboards" / f"{stem}.json")
                if p["title"].startswith(title))  # fmt: skip


def test_slo_thresholds_match_the_alerts() -> None:
    fast, slow = _alert("InferenceTTFTBudgetBurnFast"), _alert("InferenceTTFTBudgetBurnSlow")
    recording = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"][0]["rules"][0]
    slo_seconds = float(re.search(r'le="([\d.]+)"', recording["expr"]).group(1))  # type: ignore[union-attr]
    for title in ("TTFT p50 / p99 by region", "TTFT p99 by pool"):
        assert _steps(_panel("region-slos", title)) == [slo_seconds]
    assert _steps(_panel("region-slos", "Requests within the TTFT SLO")) == [0.99]
    burn = _steps(_panel("region-slos", "TTFT error-budget burn rate"))
    assert burn == [float(re.search(r"\((\d+(?:\.\d+)?) \* 0\.01\)", e).group(1))  # type: ignore[union-attr]
                    for e in (slow, fast)]  # fmt: skip
    kv = float(_alert("InferenceKVCacheSaturation").rsplit(">", 1)[1])
    assert _steps(_panel("region-slos", "KV-cache usage")) == [kv]
    # Thresholds are drawn on time series, not only kept in the JSON.
    custom = _panel("region-slos", "TTFT p99 by pool")["fieldConfig"]["defaults"]["custom"]
    assert custom["thresholdsStyle"]["mode"] != "off"
