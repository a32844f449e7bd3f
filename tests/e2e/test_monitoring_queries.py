"""Every PromQL expression of the dashboards and alert rules returns data from the local
fleet's real Prometheus under load (alert expressions without their threshold comparison),
the unit-economics rules and the economics dashboard included; and each pool's cost per
million tokens in its factory's status agrees with the same figure computed here from the raw
token samples Prometheus holds (issue 19, item 4). The few rollout expressions that have data
only once a canary rollout has run are listed, with the reason, in
WITHOUT_DATA_UNTIL_A_ROLLOUT: they must run, but may return nothing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

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
                found.append((f"rule:{name}:{i}", present(part)))
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for path in sorted((MONITORING / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard.get("panels", []):
            for i, target in enumerate(panel.get("targets", [])):
                if expr := target.get("expr"):
                    # Grafana's interval variables (at least four scrape intervals), then the
                    # template variables (every value: the namespace filter, ...).
                    expr = re.sub(r"\$__(rate_)?interval\b", "1m", expr)
                    expr = re.sub(r"\$\w+", ".*", expr)
                    found.append((f"{path.stem}:{panel.get('title')}:{i}", expr))
    return found


ABSENT = re.compile(r"absent(_over_time)?\((?P<inner>.*)\)", re.DOTALL)


def present(expr: str) -> str:
    """What an `absent(...)` alert watches: the series that must be there (absent() itself
    returns data only when they are gone, so a healthy fleet shows none)."""
    match = ABSENT.fullmatch(_unwrap(expr))
    if match is None:
        return expr
    inner = match["inner"].strip()
    return re.sub(r"\[[^\]]*\]$", "", inner) if match.group(1) else inner


def test_threshold_stripping() -> None:
    assert without_thresholds('max by (a) (m{x="1"}) == 1') == ['max by (a) (m{x="1"})']
    assert without_thresholds("(sum(a) == 0) and on (r) (sum(b) > 0)") == ["sum(a)", "sum(b)"]
    assert without_thresholds("r:x > (14.4 * 0.01) and r:y > (14.4 * 0.01)") == ["r:x", "r:y"]
    assert present('absent(up{job="factory-router"})') == 'up{job="factory-router"}'
    assert present("absent_over_time(m[5m])") == "m"


EXPRESSIONS = rule_expressions() + dashboard_expressions()
# Expressions with nothing to show until a canary rollout has run: the fleet's factories have
# no spec.rollout and this module starts none (a rollout's own e2e test is where they get
# data). They must still run on the live Prometheus (a query error fails), but may return
# nothing. Expression id -> why it is empty.
WITHOUT_DATA_UNTIL_A_ROLLOUT = {
    "rollouts:Step age by factory:0": "steps in progress only; a Stable factory's step "
    "timestamp is 0, left out",
    "rollouts:Canary weight by pool:0": "exported only for pools that have a canary",
    "rollouts:Rollbacks by failed check (1h):0": "a series per failed check appears with "
    "the first rollback",
}


def test_without_data_entries_name_expressions() -> None:
    assert set(WITHOUT_DATA_UNTIL_A_ROLLOUT) <= {name for name, _ in EXPRESSIONS}


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


# An autoscaled EU model with one batch slot and no room to grow: the workload's share of it
# queues, so the autoscaler reports CapacityPressure (and scale events are counted).
PRESSURED = {
    "apiVersion": "inference.factory.dev/v1alpha1", "kind": "InferenceFactory",
    "metadata": {"name": "pressured", "namespace": "monitoring-check"},
    "spec": {
        "model": {"name": "pressured-8b", "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "engine": {"args": {"maxNumSeqs": 1}},
        "residency": {"jurisdictions": ["EU"]},
        "autoscaling": {},
        "pools": [{"name": "dub", "region": "eu-west-1",
                   "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
                   "replicas": {"min": 1, "max": 2}}],
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def loaded_prometheus(fleet: Fleet) -> Iterator[PrometheusConnect]:
    """Prometheus after a short mixed workload through the router, with some residency
    denials, one factory that cannot be placed (so the not-ready and lack-of-accelerators
    expressions have something to show) and one short of capacity in its jurisdiction."""
    fleet.cluster.kubectl("create", "namespace", "monitoring-check")
    fleet.cluster.kubectl("apply", "-f", "-", input=json.dumps(TOO_BIG))
    fleet.cluster.kubectl("apply", "-f", "-", input=json.dumps(PRESSURED))
    wait_until(lambda: "1" in fleet.cluster.kubectl(
        "get", "inferencefactory", "pressured", "-n", "monitoring-check",
        "-o", "jsonpath={.status.readyPools}"), 120, interval=1,
        what="the pressured factory's pool Ready")  # fmt: skip
    try:
        yield _load(fleet)
    finally:
        fleet.cluster.kubectl("delete", "namespace", "monitoring-check", "--wait=false")


def _load(fleet: Fleet) -> PrometheusConnect:
    env = fleet.env
    all_tenants = {name: t["api_key"] for name, t in env["tenants"].items()}
    tenants = dict(all_tenants)
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
    # Server-side errors for the 5xx ratio: the unplaceable factory's model, not waited for.
    for _ in range(5):
        unserved = httpx.post(f"{env['router_url']}/v1/chat/completions", timeout=10,
                              headers={"Authorization": f"Bearer {all_tenants['global']}",
                                       "x-factory-hold-timeout": "0"},
                              json={"model": "too-big",
                                    "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert unserved.status_code == 503, unserved.text
    stop = threading.Event()

    def flood() -> None:  # more than the pressured model's two one-slot replicas can take
        body = {"model": "pressured-8b", "max_tokens": 512, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
        auth = {"Authorization": f"Bearer {tenants['eu-only']}"}
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError), httpx.stream(
                "POST", f"{env['router_url']}/v1/chat/completions", json=body, headers=auth,
                timeout=60,
            ) as reply:  # fmt: skip
                for _ in reply.iter_bytes():
                    pass

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(12)]
    for flooder in flooders:
        flooder.start()
    try:
        result = asyncio.run(run(work))
    finally:
        stop.set()
    for flooder in flooders:
        flooder.join(timeout=90)
    assert result.by_status.get(200, 0) > 0.9 * result.sent, result.summary()
    return PrometheusConnect(url=env["prometheus_url"], disable_ssl=True)


@pytest.mark.parametrize(("name", "expr"), EXPRESSIONS, ids=[n for n, _ in EXPRESSIONS])
def test_expression_returns_data(loaded_prometheus: PrometheusConnect, name: str,
                                 expr: str) -> None:  # fmt: skip
    if name in WITHOUT_DATA_UNTIL_A_ROLLOUT:
        loaded_prometheus.custom_query(expr)  # a query Prometheus refuses raises
        return
    result = wait_until(lambda: loaded_prometheus.custom_query(expr), 30, interval=1,
                        what=f"data for {name}: {expr}")  # fmt: skip
    assert result


WINDOW_SECONDS = 300  # the operator's and the recording rules' [5m]


def _increase(values: list[float]) -> float:
    """A counter's increase over its samples, across restarts (a drop is a reset)."""
    return sum(b - a if b >= a else b for a, b in itertools.pairwise(values))


def _offline_cost(prom: PrometheusConnect, factory: dict[str, Any], pool: dict[str, Any],
                  region: dict[str, Any]) -> float:  # fmt: skip
    """The pool's cost per million tokens from the raw samples of its engines' token counters
    over the 5 minutes before the status's costsTime, every replica ready then billed."""
    meta = factory["metadata"]
    at = datetime.fromisoformat(factory["status"]["costsTime"].replace("Z", "+00:00"))
    match = f'namespace="{meta["namespace"]}", factory="{meta["name"]}", pool="{pool["name"]}"'
    tokens = 0.0
    for counter in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
        for series in prom.custom_query(f"{counter}{{{match}}}[{WINDOW_SECONDS}s]",
                                        params={"time": at.timestamp()}):  # fmt: skip
            tokens += _increase([float(v) for _, v in series["values"]])
    # The ready replicas at that time, as the operator exported them (status may have moved
    # on since: a later reconcile keeps the cost but updates readyReplicas).
    ready = prom.custom_query(f'max(factory_operator_pool_replicas{{kind="ready", {match}}})',
                              params={"time": at.timestamp()})  # fmt: skip
    replicas = float(ready[0]["value"][1])
    spec = next(p for p in factory["spec"]["pools"] if p["name"] == pool["name"])
    accelerator = spec["accelerator"]
    per_hour = replicas * accelerator["count"] * region["pricing"][accelerator["type"]]
    return 1e6 * per_hour / (3600 * tokens / WINDOW_SECONDS)


def test_status_cost_agrees_with_an_offline_computation(
    fleet: Fleet, loaded_prometheus: PrometheusConnect
) -> None:
    def costed() -> list[tuple[dict[str, Any], dict[str, Any]]]:
        listed = fleet.cluster.kubectl("get", "inferencefactories", "-A", "-o", "json")
        return [
            (factory, pool)
            for factory in json.loads(listed)["items"]
            for pool in (factory.get("status") or {}).get("pools", [])
            if "costPerMillionTokens" in pool
        ]

    # The economics timer runs once a minute per factory.
    found = wait_until(costed, 150, interval=2, what="a pool's costPerMillionTokens in status")
    regions = {r["metadata"]["name"]: r["spec"] for r in json.loads(
        fleet.cluster.kubectl("get", "fleetregions", "-o", "json"))["items"]}  # fmt: skip
    compared = []
    for factory, pool in found:
        offline = _offline_cost(loaded_prometheus, factory, pool, regions[pool["region"]])
        name = f"{factory['metadata']['namespace']}/{factory['metadata']['name']}/{pool['name']}"
        compared.append((name, pool["costPerMillionTokens"], round(offline, 4)))
        print(f"{name}: status {pool['costPerMillionTokens']} USD/Mtok, offline {offline:.4f}")
    assert all(abs(status - offline) <= 0.05 * offline for _, status, offline in compared), compared
    # kubectl's printer column (-o wide) shows the same figures.
    wide = fleet.cluster.kubectl("get", "inferencefactories", "-A", "-o", "wide")
    assert "USD/MTOK" in wide.splitlines()[0]
