"""Faults under load on the real local fleet: Prometheus killed, a region's engines killed.

Load is bounded (a request count or a stop signal, and a deadline), concurrent, and
stops by itself; each test restores what it broke through `factoryctl dev up --only`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from factoryctl import procs
from factoryctl.home import FleetHome
from tests.e2e.conftest import Fleet
from tests.e2e.test_router_openai import (
    LLAMA,
    assert_stayed_inside,
    engine_requests,
    region_jurisdictions,
    tenant,
)
from tests.support.waiting import async_wait_until, wait_until

LOAD_DEADLINE_S = 75.0  # the load stops here whatever happened (tests stay under ~90 s)


@dataclass
class Load:
    """Closed-loop load of non-streaming chat requests from one tenant."""

    url: str
    key: str
    model: str = LLAMA
    concurrency: int = 16
    limit: int = 100_000  # requests, at most
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    regions: Counter[str] = field(default_factory=Counter)
    jurisdictions: Counter[str] = field(default_factory=Counter)
    regions_after_mark: Counter[str] = field(default_factory=Counter)
    marked: bool = False

    @property
    def done(self) -> int:
        return self.ok + sum(self.errors.values())

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        timeout = httpx.Timeout(30.0, connect=5.0)
        deadline = time.monotonic() + LOAD_DEADLINE_S
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:

            async def worker(index: int) -> None:
                while not self.stop.is_set() and self.sent < self.limit:
                    if time.monotonic() > deadline:
                        return
                    self.sent += 1
                    body: dict[str, Any] = {
                        "model": self.model,
                        "messages": [{"role": "user", "content": f"worker {index} says hi"}],
                        "max_tokens": 4,
                    }
                    await self._one(http, body)

            await asyncio.gather(*(worker(i) for i in range(self.concurrency)))

    async def _one(self, http: httpx.AsyncClient, body: dict[str, Any]) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        try:
            reply = await http.post(f"{self.url}/v1/chat/completions", json=body, headers=headers)
        except httpx.HTTPError as exc:
            self.errors[type(exc).__name__] += 1
            return
        if reply.status_code != 200:
            self.errors[f"{reply.status_code} {reply.text[:120]}"] += 1
            return
        self.ok += 1
        region = reply.headers["x-factory-region"]
        self.regions[region] += 1
        self.jurisdictions[reply.headers["x-factory-jurisdiction"]] += 1
        if self.marked:
            self.regions_after_mark[region] += 1


def readyz(url: str) -> dict[str, Any]:
    """The router's /readyz details (`url`: its admin listener)."""
    try:
        doc: dict[str, Any] = httpx.get(f"{url}/readyz", timeout=5).json()
    except httpx.HTTPError as exc:
        return {"status": f"unreachable: {exc}"}
    return doc


async def test_prometheus_killed_mid_run(fleet: Fleet) -> None:
    url, admin = fleet.env["router_url"], fleet.env["router_admin_url"]
    key, _ = tenant(fleet, "global")
    assert readyz(admin)["status"] == "ok"
    load = Load(url, key, concurrency=8)
    runner = asyncio.create_task(load.run())
    try:
        await async_wait_until(lambda: _now(load.ok >= 200), 30, what="load under way")
        stopped = await asyncio.to_thread(procs.stop, FleetHome(fleet.home), "prometheus")
        assert stopped, "Prometheus was not running"
        at_kill = load.ok

        async def degraded() -> dict[str, Any] | None:
            doc = await asyncio.to_thread(readyz, admin)
            return doc if doc["status"] == "degraded" else None

        doc = await async_wait_until(degraded, 30, interval=0.5, what="/readyz degraded")
        assert doc is not None
        assert doc["load_data"]["stale"] and doc["load_data"]["source"] == "passive-only"
        assert any("load data stale" in p for p in doc["problems"])
        # Routing goes on while the load data is missing.
        await async_wait_until(lambda: _now(load.ok >= at_kill + 200), 30, what="more requests")

        restored = await asyncio.to_thread(fleet.factoryctl, "dev", "up", "--only", "prometheus")
        assert restored.returncode == 0, restored.stderr[-2000:]

        async def fresh() -> bool:
            doc = await asyncio.to_thread(readyz, admin)
            return doc["status"] == "ok" and not doc["load_data"]["stale"]

        await async_wait_until(fresh, 30, interval=0.5, what="/readyz ok with fresh load data")
    finally:
        load.stop.set()
        await runner
    assert not load.errors, load.errors
    assert load.ok >= at_kill + 200


async def test_region_simulators_killed_fail_over_inside_the_eu(fleet: Fleet) -> None:
    url = fleet.env["router_url"]
    key, allowed = tenant(fleet, "eu-only")
    total, kill_at = 5_000, 1_000
    before = await asyncio.to_thread(engine_requests, fleet)
    load = Load(url, key, concurrency=24, limit=total)
    runner = asyncio.create_task(load.run())
    try:
        await async_wait_until(lambda: _now(load.done >= kill_at), 60, what=f"{kill_at} answers")
        assert load.regions["eu-west-1"] > 0, load.regions  # the router's own region first
        killed = await asyncio.to_thread(fleet.factoryctl, "dev", "kill-sim", "eu-west-1")
        assert killed.returncode == 0, killed.stderr
        load.marked = True
    finally:
        await runner
    assert load.sent == total and load.done == total, "the load hit its deadline"
    failed = sum(load.errors.values())
    assert failed <= total * 0.001, load.errors
    assert set(load.jurisdictions) == {"EU"}, load.jurisdictions
    assert load.regions_after_mark["eu-central-1"] > 0.9 * sum(load.regions_after_mark.values())
    after = await asyncio.to_thread(engine_requests, fleet)
    assert "eu-west-1" not in after  # its simulator really is down
    assert_stayed_inside(before, after, allowed)
    assert after["eu-central-1"] - before["eu-central-1"] >= load.regions["eu-central-1"]

    restored = await asyncio.to_thread(fleet.factoryctl, "dev", "up", "--only", "engines")
    assert restored.returncode == 0, restored.stderr[-2000:]
    await asyncio.to_thread(_served_from, fleet, key, "eu-west-1")


def _served_from(fleet: Fleet, key: str, region: str) -> None:
    """Wait until the router sends the tenant's requests to `region` again."""
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "back?"}], "max_tokens": 2}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(timeout=10) as http:

        def answered_there() -> bool:
            reply = http.post(f"{fleet.env['router_url']}/v1/chat/completions",
                              json=body, headers=headers)  # fmt: skip
            return reply.status_code == 200 and reply.headers["x-factory-region"] == region

        wait_until(answered_there, 60, interval=0.5, what=f"requests served from {region} again")
    assert region_jurisdictions()[region] == "EU"


async def _now(value: bool) -> bool:
    return value
