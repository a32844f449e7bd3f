"""The fleet table of `factoryctl dev status`: regions, pools, readiness, load and traffic.

Pools and readiness come from the InferenceFactories' status (what the operator reports);
load from Prometheus (the engines' own vLLM metrics); traffic in the last minute from the
router's request counter. Every part is optional: what cannot be read is shown as "-".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from factoryctl.fleet import FleetContext

TIMEOUT = httpx.Timeout(3.0)
# PromQL, by (factory, pool): the engines' queue, running batch and KV-cache usage.
LOAD_QUERIES = {
    "waiting": "sum by (factory, pool) (vllm:num_requests_waiting)",
    "running": "sum by (factory, pool) (vllm:num_requests_running)",
    "kv": "avg by (factory, pool) (vllm:kv_cache_usage_perc)",
}
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


def pool_rows(ctx: FleetContext) -> list[PoolRow]:
    done = ctx.kubectl().run("get", "inferencefactories", "-A", "-o", "json", check=False)
    if done.returncode != 0:
        return []
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
    header = ("REGION", "JURIS.", "FACTORY", "POOL", "READY", "STATE", "LOAD", "REQ/1m")
    lines = [header]
    for row in rows:
        requests = traffic.get(row.region)
        lines.append((row.region, row.jurisdiction, row.factory, row.pool, row.ready, row.state,
                      row.load, "-" if requests is None else f"{requests:.0f}"))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)  # fmt: skip
