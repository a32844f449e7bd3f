"""Every PromQL expression of the dashboards and alert rules returns data from the local
fleet's real Prometheus under load (alert expressions without their threshold comparison)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_api_client import PrometheusConnect

from factoryctl.load import Workload, run
from tests.e2e.conftest import Fleet
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*")
SET_OPERATOR = re.compile(r"\s+(and|or|unless)(\s+(on|ignoring)\s*\([^)]*\))?\s+")


def _top_level(expr: str, pattern: re.Pattern[str]) -> list[re.Match[str]]:
    """Matches of `pattern` outside any (), {} or []."""
    depth, found, i = 0, [], 0
    while i < len(expr):
        ch = expr[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and (m := pattern.match(expr, i)):
            found.append(m)
            i = m.end()
            continue
        i += 1
    return found


def _unwrap(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr
        expr = expr[1:-1].strip()
    return expr


def without_thresholds(expr: str) -> list[str]:
    """The parts of an alert expression with their threshold comparisons cut off."""
    expr = _unwrap(" ".join(expr.split()))
    parts, start = [], 0
    for m in _top_level(expr, SET_OPERATOR):
        parts.append(expr[start : m.start()])
        start = m.end()
    parts.append(expr[start:])
    cut = []
    for raw in parts:
        part = _unwrap(raw)
        comparisons = _top_level(part, COMPARISON)
        cut.append(_unwrap(part[: comparisons[0].start()]) if comparisons else part)
    return cut


def rule_expressions() -> list[tuple[str, str]]:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    found = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            for i, part in enumerate(without_thresholds(rule["expr"])):
                found.append((f"rule:{name}:{i}", part))
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for path in sorted((MONITORING / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard.get("panels", []):
            for i, target in enumerate(panel.get("targets", [])):
                if expr := target.get("expr"):
                    expr = re.sub(r"\$\w+", ".*", expr)
                    found.append((f"{path.stem}:{panel.get('title')}:{i}", expr))
    return found


def test_threshold_stripping() -> None:
    assert without_thresholds('max by (a) (m{x="1"}) == 1') == ['max by (a) (m{x="1"})']
    assert without_thresholds("(sum(a) == 0) and on (r) (sum(b) > 0)") == ["sum(a)", "sum(b)"]
    assert without_thresholds("r:x > (14.4 * 0.01) and r:y > (14.4 * 0.01)") == ["r:x", "r:y"]


EXPRESSIONS = rule_expressions() + dashboard_expressions()


TOO_BIG = {
    "apiVersion": "inference.factory.dev/v1alpha1", "kind": "InferenceFactory",
    "metadata": {"name": "too-big", "namespace": "monitoring-check"},
    "spec": {
        "model": {"name": "too-big", "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "pools": [{"name": "h100", "region": "us-east-1",
                   "accelerator": {"kind": "nvidia", "type": "H100", "count": 16},
                   "replicas": {"min": 1, "max": 1}}],
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def loaded_prometheus(fleet: Fleet) -> Iterator[PrometheusConnect]:
    """Prometheus after a short mixed workload through the router, with some residency
    denials and one factory that cannot be placed (so the not-ready and lack-of-accelerators
    expressions have something to show)."""
    fleet.cluster.kubectl("create", "namespace", "monitoring-check")
    fleet.cluster.kubectl("apply", "-f", "-", input=json.dumps(TOO_BIG))
    try:
        yield _load(fleet)
    finally:
        fleet.cluster.kubectl("delete", "namespace", "monitoring-check", "--wait=false")


def _load(fleet: Fleet) -> PrometheusConnect:
    env = fleet.env
    tenants = {name: t["api_key"] for name, t in env["tenants"].items()}
    models = {"eu-only": ["llama-3.1-8b-instruct"], "us-only": ["qwen2.5-7b-instruct"],
              "global": ["llama-3.1-8b-instruct", "qwen2.5-7b-instruct"]}  # fmt: skip
    tenants = {k: v for k, v in tenants.items() if k in models}
    work = Workload(env["router_url"], tenants, models, rate=8, duration=20, shared_prefix=0.5)
    # Residency denials: an EU-only tenant asking for US processing is refused (403).
    for _ in range(5):
        denied = httpx.post(f"{env['router_url']}/v1/chat/completions", timeout=10,
                            headers={"Authorization": f"Bearer {tenants['eu-only']}",
                                     "x-factory-residency": "US"},
                            json={"model": "llama-3.1-8b-instruct",
                                  "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert denied.status_code == 403
    result = asyncio.run(run(work))
    assert result.by_status.get(200, 0) > 0.9 * result.sent, result.summary()
    return PrometheusConnect(url=env["prometheus_url"], disable_ssl=True)


@pytest.mark.parametrize(("name", "expr"), EXPRESSIONS, ids=[n for n, _ in EXPRESSIONS])
def test_expression_returns_data(loaded_prometheus: PrometheusConnect, name: str,
                                 expr: str) -> None:  # fmt: skip
    result = wait_until(lambda: loaded_prometheus.custom_query(expr), 30, interval=1,
                        what=f"data for {name}: {expr}")  # fmt: skip
    assert result
