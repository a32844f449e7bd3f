"""The fleet-routing scenario: open-loop streaming clients, and the figures computed from them.

Client streams (tenant, model, the router of the client's region, Poisson rate) run
concurrently; the EU stream surges in the middle third of the run. Each request is a
streaming chat completion with a fixed output length (`ignore_eos`), so every policy sees
the same work. Time to first token (TTFT) is measured at the client: request sent -> first
SSE chunk that carries generated text.

Figures (pure functions of the records, `summarise`):
- p50/p99 TTFT of successful requests; errors count as missed SLO;
- goodput: requests per second that succeeded with TTFT <= the SLO;
- residency violations: answers whose `x-factory-jurisdiction` (or the region of the
  pool named by `x-factory-pool`) is outside the tenant's jurisdictions;
- cost per million generated tokens, two views: *provisioned* (every replica of the fleet
  billed for the run, FleetRegion pricing x accelerators) and *busy* (a pool billed, all
  its replicas, only while at least one request runs on it: the scale-to-zero view, which
  rewards a policy that keeps expensive or far pools idle).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

SSE_PREFIX = b"data: "


@dataclass(frozen=True)
class Stream:
    """One population of clients: a tenant in a region, sending to its region's router."""

    name: str
    tenant: str
    client_region: str
    model: str
    rate: float  # requests per second (Poisson)
    surge: float = 1.0  # rate multiplier during the surge window


@dataclass(frozen=True)
class PoolInfo:
    """A pool of the fleet: where it runs and what one replica costs per hour."""

    service: str
    region: str
    jurisdiction: str
    accelerator: str
    replicas: int
    price_per_replica_hour: float


@dataclass
class Record:
    stream: str
    tenant: str
    start: float
    at_s: float = 0.0  # scheduled offset in the measured run (brownout and surge windows)
    end: float = 0.0
    ttft_s: float | None = None
    status: int = 0
    error: str | None = None
    pool: str | None = None
    region: str | None = None
    jurisdiction: str | None = None
    engine: str | None = None  # the simulated engine's id (x-factory-sim-engine), peers too
    tokens: int = 0


@dataclass
class Scenario:
    streams: list[Stream]
    duration_s: float = 60.0
    warmup_s: float = 5.0
    surge_window: tuple[float, float] = (1 / 3, 2 / 3)  # fractions of the measured run
    max_tokens: int = 32
    seed: int = 7
    records: list[Record] = field(default_factory=list)

    def rate_at(self, stream: Stream, t: float) -> float:
        """The stream's rate at `t` seconds into the measured run."""
        lo, hi = self.surge_window
        in_surge = lo * self.duration_s <= t < hi * self.duration_s
        return stream.rate * (stream.surge if in_surge else 1.0)


def arrivals(scenario: Scenario, stream: Stream, seed: int) -> list[float]:
    """The stream's arrival times, seconds from the start of the measured part (warm-up
    arrivals are negative). Drawn from the seed before anything runs, so every policy gets
    exactly the same requests at the same offsets, however loaded the machine is."""
    local = random.Random(seed)
    t, out = -scenario.warmup_s, list[float]()
    while True:
        t += local.expovariate(scenario.rate_at(stream, max(t, 0.0)))
        if t >= scenario.duration_s:
            return out
        out.append(t)


SideTask = Callable[[float], Coroutine[Any, Any, Any]]


async def run(
    scenario: Scenario,
    routers: dict[str, str],
    keys: dict[str, str],
    stream_headers: dict[str, dict[str, str]] | None = None,
    side_tasks: list[SideTask] | None = None,
) -> tuple[list[Record], list[Any]]:
    """Run the scenario against one router per client region (`routers` keyed by region),
    or one per stream (keyed by stream name, e.g. peers that know no residency and so get
    one tenant's compliant backends each); records of the measured part. `stream_headers`
    replace a stream's request headers (a peer's own key).

    `side_tasks` (a brownout, a sampler) are started with the run's own origin (the
    monotonic time of offset 0 of the measured part), so that they keep to the scenario's
    clock however long the routers took to start; they are cancelled when the last request
    ends, and their results (or exceptions) are returned in order."""
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=128)
    timeout = httpx.Timeout(60.0, connect=5.0)
    rng = random.Random(scenario.seed)
    schedule = sorted(
        (t, i, stream)
        for i, stream in enumerate(scenario.streams)
        for t in arrivals(scenario, stream, rng.randrange(1 << 30))
    )
    records: list[Record] = []
    origin = time.monotonic() + scenario.warmup_s
    sides: list[asyncio.Task[Any]] = [
        asyncio.create_task(make(origin)) for make in side_tasks or []
    ]
    try:
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            tasks: set[asyncio.Task[None]] = set()
            for t, _, stream in schedule:
                delay = origin + t - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                rec = Record(stream.name, stream.tenant, time.monotonic(), at_s=t)
                if t >= 0:
                    records.append(rec)
                url = routers.get(stream.name) or routers[stream.client_region]
                headers = {
                    "authorization": f"Bearer {keys[stream.tenant]}",
                    "x-factory-client-region": stream.client_region,
                    **(stream_headers or {}).get(stream.name, {}),
                }
                task = asyncio.create_task(
                    _one(http, url, headers, stream, rec, scenario.max_tokens)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=90)
    finally:
        for side in sides:
            side.cancel()
        side_results = await asyncio.gather(*sides, return_exceptions=True)
    return records, list(side_results)


async def _one(
    http: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    stream: Stream,
    rec: Record,
    max_tokens: int,
) -> None:
    body = {
        "model": stream.model,
        "messages": [{"role": "user", "content": f"{stream.name}: tell me about the fleet."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    try:
        async with http.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers
        ) as reply:
            rec.status = reply.status_code
            rec.pool = reply.headers.get("x-factory-pool")
            rec.region = reply.headers.get("x-factory-region")
            rec.jurisdiction = reply.headers.get("x-factory-jurisdiction")
            # What the engine itself says (a peer router relays it, LiteLLM as
            # llm_provider-*): where the answer was really made, whoever routed it.
            h = reply.headers
            rec.engine = h.get("x-factory-sim-engine") or h.get("llm_provider-x-factory-sim-engine")
            sim_region = h.get("x-factory-sim-region") or h.get("llm_provider-x-factory-sim-region")
            rec.region = rec.region or sim_region
            if reply.status_code != 200:
                rec.error = (await reply.aread())[:200].decode(errors="replace")
                return
            async for line in reply.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    if rec.ttft_s is None:
                        rec.ttft_s = time.monotonic() - rec.start
                    rec.tokens += 1
    except httpx.HTTPError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        rec.end = time.monotonic()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of intervals."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def summarise(
    records: list[Record],
    duration_s: float,
    slo_ms: float,
    allowed: dict[str, set[str]],
    pools: dict[str, PoolInfo],
) -> dict[str, Any]:
    """The figures of one policy's run (see the module docstring)."""
    ok = [r for r in records if r.status == 200 and r.error is None and r.ttft_s is not None]
    ttft_ms = sorted(r.ttft_s * 1000 for r in ok if r.ttft_s is not None)
    good = [r for r in ok if r.ttft_s is not None and r.ttft_s * 1000 <= slo_ms]
    violations = []
    region_jurisdiction = {p.region: p.jurisdiction for p in pools.values()}
    for r in records:
        if r.status != 200:
            continue
        pool = pools.get(r.pool or "")
        # The router's claim (absent for peers), the pool's FleetRegion and the engine's own
        # region: every one that is known must be allowed; an answer of unknown origin
        # counts as a violation.
        known = [r.jurisdiction, pool.jurisdiction if pool else None,
                 region_jurisdiction.get(r.region or "")]  # fmt: skip
        seen = [j for j in known if j is not None]
        if not seen or any(j not in allowed[r.tenant] for j in seen):
            violations.append(asdict(r))
    tokens = sum(r.tokens for r in ok)
    provisioned = sum(p.price_per_replica_hour * p.replicas for p in pools.values())
    provisioned_cost = provisioned * duration_s / 3600
    busy_cost = 0.0
    busy_by_pool: dict[str, float] = {}
    for name, pool in pools.items():
        spans = [(r.start, r.end) for r in ok if r.pool == name]
        seconds = _busy_seconds(spans)
        busy_by_pool[name] = round(seconds, 2)
        busy_cost += pool.price_per_replica_hour * pool.replicas * seconds / 3600
    per_stream: dict[str, Any] = {}
    for stream in sorted({r.stream for r in records}):
        mine = [r for r in records if r.stream == stream]
        mine_ok = sorted(r.ttft_s * 1000 for r in mine if r.ttft_s is not None and r.status == 200)
        per_stream[stream] = {
            "requests": len(mine),
            "errors": sum(1 for r in mine if r.status != 200 or r.error is not None),
            "p50_ttft_ms": _round(_pct(mine_ok, 0.5)),
            "p99_ttft_ms": _round(_pct(mine_ok, 0.99)),
            "slo_met": sum(1 for v in mine_ok if v <= slo_ms),
            "regions": dict(Counter(r.region for r in mine if r.region)),
        }
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "error_samples": sorted({r.error or str(r.status) for r in records if r not in ok})[:5],
        "p50_ttft_ms": _round(_pct(ttft_ms, 0.5)),
        "p99_ttft_ms": _round(_pct(ttft_ms, 0.99)),
        "slo_ms": slo_ms,
        "slo_attainment": round(len(good) / len(records), 4) if records else None,
        "goodput_rps": round(len(good) / duration_s, 3),
        "residency_violations": len(violations),
        "violation_samples": violations[:5],
        "generated_tokens": tokens,
        "cost_per_mtok_provisioned_usd": _round(
            provisioned_cost / tokens * 1e6 if tokens else None
        ),
        "cost_per_mtok_busy_usd": _round(busy_cost / tokens * 1e6 if tokens else None),
        "busy_seconds_by_pool": busy_by_pool,
        "requests_by_pool": dict(Counter(r.pool for r in ok if r.pool)),
        "streams": per_stream,
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)
