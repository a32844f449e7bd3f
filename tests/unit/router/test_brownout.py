"""Brownout: a region whose first bytes arrive late while its engine reports a healthy TTFT
loses its traffic within seconds to a compliant region, regains it after recovery, and an
EU-only tenant's requests never reach the (faster) US engine meanwhile.

Real fake engines behind the real router, on 127.0.0.1; the engines' metrics are a fed
load snapshot (every engine: nothing waiting, 30 ms TTFT). The load is three streaming
clients; every wait has a deadline. Who took which request comes from the router's access
log (a probe is logged as one), so the checks hold however slow the machine is.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from factory_router.app.logs import AccessLog
from factory_router.app.server import RouterServer
from factory_router.policy.config import (
    LatencyEjectionConfig,
    RouterConfig,
    ScoringConfig,
    Timeouts,
)
from factory_router.policy.fleet import Backend
from factory_router.policy.policies import RouteRequest
from factory_router.policy.scoring import LoadSample
from factory_router.signals.prometheus import Snapshot
from tests.unit.router.router_testkit import FakeEngine, auth, backend, router, wait_until

BODY = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
HEALTHY = LoadSample(waiting=0, running=0, kv_usage=0.1, ttft_ms=30.0)
WORKERS = 3


@dataclass
class FrontDelayed(FakeEngine):
    """An engine behind something slow (a sidecar, a congested link): every answer starts
    `front_delay` seconds late; its health checks and its own metrics are unaffected."""

    front_delay: float = 0.0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.front_delay:
            await asyncio.sleep(self.front_delay)
        return await super()._handle(request)


@asynccontextmanager
async def started(*fakes: FakeEngine) -> AsyncIterator[None]:
    try:
        for e in fakes:
            await e.start()
        yield
    finally:
        for e in fakes:
            await e.stop()


@dataclass
class Load:
    """Clients of the EU-only tenant, streaming one request after another."""

    url: str
    answers: list[tuple[int, str, str]]  # status, x-factory-region, x-factory-jurisdiction
    stop: asyncio.Event

    async def worker(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                async with c.stream(
                    "POST", "/v1/chat/completions", json=BODY, headers=auth("eu")
                ) as resp:
                    await resp.aread()
                    h = resp.headers
                    self.answers.append(
                        (resp.status_code, h["x-factory-region"], h["x-factory-jurisdiction"])
                    )


def chosen(r: RouterServer) -> str:
    """The backend the router would pick for the EU-only tenant now (nothing consumed)."""
    req = RouteRequest("m", frozenset({"EU"}), "eu-west-1", None, "explain")
    return r.state.plan(req, explain=True).ordered[0].backend.id


async def explain_rows(r: RouterServer) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=r.admin_url) as c:
        reply = await c.get(
            "/admin/explain", params={"tenant": "eu-only", "model": "m"}, headers=auth("admin")
        )
        reply.raise_for_status()
        return {row["region"]: row for row in reply.json()["candidates"]}


class Served:
    """The router's access log: (region, was it a latency probe) per answered request."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def lines(self) -> list[tuple[str | None, bool]]:
        rows = [json.loads(line) for line in self.buffer.getvalue().splitlines()]
        return [(row.get("region"), row["reason"].startswith("latency probe")) for row in rows]

    def since(self, mark: int, region: str) -> tuple[int, int]:
        """Requests served by `region` after the first `mark` lines: (routed, probes)."""
        tail = [probe for where, probe in self.lines()[mark:] if where == region]
        return len(tail) - sum(tail), sum(tail)


async def moved(to: FakeEngine, away: FakeEngine, n: int, timeout: float = 30) -> tuple[int, int]:
    """Requests to `to` and `away` while `to` takes `n` more."""
    to0, away0 = to.total, away.total
    await wait_until(lambda: to.total - to0 >= n, timeout=timeout, what=f"{n} to {to.url}")
    return to.total - to0, away.total - away0


async def test_a_browned_out_region_loses_its_traffic_and_regains_it_after_recovery() -> None:
    west = FrontDelayed()  # eu-west-1, the router's own region: the nearest
    central = FakeEngine(network_delay=0.1)  # eu-central-1: 100 ms away
    us = FakeEngine()  # us-east-1: as near as west, and never allowed for this tenant
    cfg = RouterConfig(
        timeouts=Timeouts(first_byte=5.0, grace_period=2.0),
        scoring=ScoringConfig(snapshot_stale_seconds=3600),
        # 5% of the requests may probe (1% by default): a recovery is seen in seconds at
        # the few dozen requests a second of this test.
        latency_ejection=LatencyEjectionConfig(probe_share=0.05),
    )
    served = Served()
    async with started(west, central, us):
        backends: list[Backend] = [
            backend(west, "eu-west", "eu-west-1"),
            backend(central, "eu-central", "eu-central-1"),
            backend(us, "us", "us-east-1"),
        ]
        async with router(backends, config=cfg, access_log=AccessLog(served.buffer)) as r:
            r.state.load.install(
                Snapshot(
                    time.monotonic(),
                    by_pool={(b.pool, b.region or ""): HEALTHY for b in backends},
                )
            )
            west_id, central_id = backends[0].id, backends[1].id
            load = Load(r.url, [], asyncio.Event())
            workers = [asyncio.create_task(load.worker()) for _ in range(WORKERS)]
            try:
                # Healthy: the nearest region takes the traffic.
                await wait_until(lambda: central.probes > 0, timeout=10, what="RTT probes")
                to_west, to_central = await moved(west, central, 30)
                assert to_central < to_west

                # Brownout: 800 ms in front of west's engine, whose metrics stay healthy.
                west.front_delay = 0.8
                t0 = time.monotonic()
                await wait_until(lambda: chosen(r) == central_id, timeout=10, what="detected")
                detected_s = time.monotonic() - t0
                mark = len(served.lines())
                await moved(central, west, 40)
                await wait_until(lambda: served.since(mark, "eu-west-1")[1] > 0, 10, "a probe")
                routed, _ = served.since(mark, "eu-west-1")
                assert routed <= WORKERS  # only what was on its way there when detected
                rows = await explain_rows(r)
                w = rows["eu-west-1"]
                assert w["verdict"] != "chosen" and w["parts"]["ttft_source"] == "observed", w
                assert w["parts"]["engine_ttft_ms"] == 30.0
                assert w["parts"]["observed_ttft_ms"] >= 600.0
                assert rows["eu-central-1"]["parts"]["observed_samples"] >= 3
                assert "not allowed" in rows["us-east-1"]["verdict"]

                # Recovery: the probes see it, and west gets its traffic back.
                west.front_delay = 0.0
                t1 = time.monotonic()
                await wait_until(lambda: chosen(r) == west_id, timeout=20, what="recovered")
                recovered_s = time.monotonic() - t1
                mark = len(served.lines())
                await moved(west, central, 40)
                routed, _ = served.since(mark, "eu-central-1")
                assert routed <= WORKERS
            finally:
                load.stop.set()
                await asyncio.gather(*workers)
    print(f"brownout detected in {detected_s:.2f} s, recovery in {recovered_s:.2f} s")
    assert load.answers and all(status == 200 for status, _, _ in load.answers)
    assert {j for _, _, j in load.answers} == {"EU"}
    assert {region for _, region, _ in load.answers} == {"eu-west-1", "eu-central-1"}
    assert us.total == 0  # the nearest and fastest engine, outside the jurisdiction
