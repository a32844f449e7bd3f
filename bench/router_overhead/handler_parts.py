"""What the router's own request handling costs, piece by piece, warm, in one process
(a diagnostic breakdown for router_overhead's README, not an end-to-end figure).

    PYTHONPATH=router python bench/router_overhead/handler_parts.py

Each piece runs 20,000 times on uvloop with the bench's tenants, one backend and request
body (the same as run.py); prints microseconds per call.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import timeit
from collections.abc import Callable
from typing import Any

from common import BODY
from run import KEY, TENANTS

from factory_router.app.logs import AccessLog
from factory_router.app.state import RouterState
from factory_router.policy.affinity import prefix_key
from factory_router.policy.fleet import Backend, Region, build_fleet
from factory_router.policy.policies import RouteRequest
from factory_router.policy.tenants import allowed_jurisdictions, parse_tenants

N = 20_000
LINE = {
    **{"request_id": "0" * 32, "tenant": "bench", "model": "m", "path": "/v1/chat/completions"},
    **{"region": "eu-west-1", "jurisdiction": "EU", "pool": "bench", "backend": "bench/x"},
    **{"reason": "lowest score 2.0ms", "status": 200, "attempts": 1, "latency_ms": 1.23},
}


def per_call_us(fn: Callable[[], Any]) -> float:
    fn()
    return timeit.timeit(fn, number=N) / N * 1e6


async def main() -> None:
    b = Backend(id="bench/x", model="m", pool="bench", region="eu-west-1", url="http://h:1")
    state = RouterState.create(
        region="eu-west-1",
        tenants=parse_tenants(TENANTS),
        fleet=build_fleet([Region("eu-west-1", "EU")], [b]),
        access_log=AccessLog(io.BytesIO()),
    )
    streamed = RouterState.create(
        region="eu-west-1",
        tenants=parse_tenants(TENANTS),
        fleet=build_fleet([Region("eu-west-1", "EU")], [b]),
        access_log=AccessLog(io.BytesIO()),
    )
    tenant = state.tenants.authenticate(f"Bearer {KEY}")
    doc = json.loads(BODY)
    req = RouteRequest("m", frozenset({"EU"}), "eu-west-1", prefix_key(doc, 512), "rid")
    parts: dict[str, Callable[[], Any]] = {
        "authenticate (SHA-256 of the key)": lambda: state.tenants.authenticate(f"Bearer {KEY}"),
        "tenant limit (take and give back)": lambda: (
            state.tenant_limits.acquire(tenant),
            state.tenant_limits.release(tenant),
        ),
        "residency": lambda: allowed_jurisdictions(tenant, None, state.known_jurisdictions()),
        "JSON parse of the body": lambda: json.loads(BODY),
        "prefix digest": lambda: prefix_key(doc, 512),
        "plan (filter, health, score)": lambda: state.plan(req),
        # A stream's first byte is a latency sample, which the next plan reads (the
        # replica's and the region's windowed medians, outlier judging): SSE only.
        "SSE: first-byte sample + plan on it": lambda: (
            streamed.load.observe_first_byte(b, 1.0, streamed=True),
            streamed.plan(req),
        ),
        "metrics (latency, first byte)": lambda: (
            state.metrics.observe_request("eu-west-1", "m", 200, 0.001),
            state.metrics.observe_ttfb("eu-west-1", 0.001),
        ),
        "load bookkeeping": lambda: (
            state.load.passive.start(b.id),
            state.load.observe_first_byte(b, 1.0, streamed=False),
            state.load.passive.finish(b.id),
            state.load.observe_completion(b, duration_ms=2.0, ttfb_ms=1.0, streamed=False),
            state.budget.record_request(state.now()),
            state.ejector.record_success(b.id),
        ),
        "access-log line": lambda: state.access_log.write(LINE),
    }
    rows = [(name, per_call_us(fn)) for name, fn in parts.items()]

    async def deadline() -> None:
        async with asyncio.timeout(60):
            await asyncio.sleep(0)

    async def bare() -> None:
        await asyncio.sleep(0)

    spent = []
    for body in (deadline, bare):
        started = time.perf_counter()
        for _ in range(N):
            await body()
        spent.append((time.perf_counter() - started) / N * 1e6)
    rows.append(("first-byte deadline (asyncio.timeout)", spent[0] - spent[1]))
    print("| piece | us per request |\n|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")
    total = sum(us for name, us in rows if not name.startswith("SSE"))
    print(f"| total, JSON path (SSE: its plan row instead of the plain one) | {total:.1f} |")


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(main())
