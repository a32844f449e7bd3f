"""The fleet table of `factoryctl dev status`: regions, pools, readiness, load and traffic.

Pools and readiness come from the InferenceFactories' status (what the operator reports);
the engine column says who serves a pool's pods: `vllm` (the real engine, on a real-engine
node with the real engine on) or `sim`; load from Prometheus (the engines' own vLLM
metrics); traffic in the last minute from the router's request counter. Every part is
optional: what cannot be read is shown as "-".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from factoryctl.fleet import FleetContext
from factoryctl.topology import ENGINE_LABEL

TIMEOUT = httpx.Timeout(3.0)
# PromQL, by (factory, pool): the engines' queue, running batch and KV-cache usage.
LOAD_QUERIES = {
    "waiting": "sum by (factory, pool) (vllm:num_requests_waiting)",
    "running": "sum by (factory, pool) (vllm:num_requests_running)",
    "kv": "avg by (factory, pool) (vllm:kv_cache_usage_perc)",
}
LABEL = "inference.factory.dev"
TRAFFIC_QUERY = "sum by (region) (increase(factory_router_requests_total[1m]))"


@dataclass
class PoolRow:
    region: str
    jurisdiction: str
    factory: str
    pool: str
    ready: str
    state: str
    load: str
    engine: str = "sim"


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    try:
        reply = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=TIMEOUT)
        result: list[dict[str, Any]] = reply.json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError):
        return []
    return result


def _by_pool(url: str, promql: str) -> dict[tuple[str, str], float]:
    return {
        (r["metric"].get("factory", ""), r["metric"].get("pool", "")): float(r["value"][1])
        for r in _query(url, promql)
    }


def _json(ctx: FleetContext, *args: str) -> list[dict[str, Any]]:
    done = ctx.kubectl().run("get", *args, "-o", "json", check=False)
    items: list[dict[str, Any]] = json.loads(done.stdout)["items"] if done.returncode == 0 else []
    return items


def real_pools(ctx: FleetContext) -> set[tuple[str, str]]:
    """(factory, pool) of the pools whose pods the real vLLM engine serves."""
    if not (ctx.home.state().get("real_engine") or {}).get("on"):
        return set()
    nodes = {n["metadata"]["name"] for n in _json(ctx, "nodes", "-l", f"{ENGINE_LABEL}=vllm")}
    managed = "app.kubernetes.io/managed-by=inference-factory"
    found = set()
    for pod in _json(ctx, "pods", "-A", "-l", managed):
        if pod["spec"].get("nodeName") in nodes:
            labels = pod["metadata"].get("labels") or {}
            found.add((labels.get(f"{LABEL}/factory", ""), labels.get(f"{LABEL}/pool", "")))
    return found


def pool_rows(ctx: FleetContext) -> list[PoolRow]:
    done = ctx.kubectl().run("get", "inferencefactories", "-A", "-o", "json", check=False)
    if done.returncode != 0:
        return []
    real = real_pools(ctx)
    prometheus = ctx.home.state().get("env", {}).get("prometheus_url")
    load = {k: _by_pool(prometheus, q) for k, q in LOAD_QUERIES.items()} if prometheus else {}
    rows = []
    for item in json.loads(done.stdout)["items"]:
        name = item["metadata"]["name"]
        for pool in (item.get("status") or {}).get("pools") or []:
            key = (name, pool["name"])
            text = "-"
            if key in load.get("running", {}):
                text = (f"run {load['running'][key]:.0f} wait {load['waiting'].get(key, 0):.0f} "
                        f"kv {100 * load['kv'].get(key, 0):.0f}%")  # fmt: skip
            rows.append(PoolRow(
                region=pool.get("region", "-"), jurisdiction=pool.get("jurisdiction") or "-",
                factory=name, pool=pool["name"],
                ready=f"{pool.get('readyReplicas', 0)}/{pool.get('desiredReplicas', 0)}",
                state=pool.get("state", "-"), load=text,
                engine="vllm" if key in real else "sim",
            ))  # fmt: skip
    return sorted(rows, key=lambda r: (r.region, r.factory, r.pool))


def traffic_last_minute(ctx: FleetContext) -> dict[str, float]:
    prometheus = ctx.home.state().get("env", {}).get("prometheus_url")
    if not prometheus:
        return {}
    return {r["metric"].get("region", "-"): float(r["value"][1])
            for r in _query(prometheus, TRAFFIC_QUERY)}  # fmt: skip


def render(rows: list[PoolRow], traffic: dict[str, float]) -> str:
    """The table, one line per pool, with the region's routed requests in the last minute."""
    header = ("REGION", "JURIS.", "FACTORY", "POOL", "ENGINE", "READY", "STATE", "LOAD", "REQ/1m")
    lines = [header]
    for row in rows:
        requests = traffic.get(row.region)
        reqs = "-" if requests is None else f"{requests:.0f}"
        lines.append((row.region, row.jurisdiction, row.factory, row.pool, row.engine, row.ready,
                      row.state, row.load, reqs))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)  # fmt: skip
