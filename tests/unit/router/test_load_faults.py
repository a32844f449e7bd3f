"""Faults under (modest) load: a region's engines killed mid-run, a pool scaled down and
rolled through a backends-file change. Counts are kept small for the unit suite; the
5,000-request versions belong to the fleet suite."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from factory_router.policy.config import RouterConfig
from tests.unit.router.router_testkit import (
    REGIONS,
    FakeEngine,
    auth,
    backend,
    engines,
    router,
    wait_until,
)

BODY = {"model": "m", "messages": [{"role": "user", "content": "x"}]}


async def _hammer(url: str, n: int, concurrency: int, who: str = "eu") -> list[int]:
    statuses: list[int] = []
    todo = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as c:

        async def worker() -> None:
            for _ in todo:
                resp = await c.post("/v1/chat/completions", json=BODY, headers=auth(who))
                statuses.append(resp.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def test_region_killed_under_load_fails_over_inside_the_jurisdiction() -> None:
    async with (
        engines(4) as (west0, west1, central, us),
        router(
            [
                backend(west0, "eu-west", "eu-west-1"),
                backend(west1, "eu-west", "eu-west-1"),
                backend(central, "eu-central", "eu-central-1"),
                backend(us, "us", "us-east-1"),
            ]
        ) as r,
    ):
        run = asyncio.create_task(_hammer(r.url, 1500, 8))
        await wait_until(lambda: west0.total + west1.total > 200, timeout=20)
        await west0.stop()  # the whole eu-west-1 region goes
        await west1.stop()
        statuses = await run
        errors = sum(s != 200 for s in statuses)
        assert errors <= len(statuses) * 0.001, f"{errors} errors"
        assert central.total > 0 and us.total == 0


async def test_scale_down_and_rollout_via_file_drop_no_request(tmp_path: Path) -> None:
    path = tmp_path / "backends.json"

    def write(*live: FakeEngine) -> None:
        path.write_text(
            json.dumps(
                {
                    "regions": [{"name": r.name, "jurisdiction": r.jurisdiction} for r in REGIONS],
                    "backends": [
                        {
                            "model": "m",
                            "pool": "eu",
                            "region": "eu-west-1",
                            "url": e.url,
                            "id": f"eu/{i}",
                        }
                        for i, e in live_ids(live)
                    ],
                }
            )
        )

    ids: dict[str, int] = {}

    def live_ids(live: tuple[FakeEngine, ...]) -> list[tuple[int, FakeEngine]]:
        return [(ids.setdefault(e.url, len(ids)), e) for e in live]

    async with engines(3) as (old0, old1, new0):
        write(old0, old1)
        cfg = RouterConfig(reload_interval=0.02)
        fleet_backends: list[Any] = [
            backend(old0, "eu", "eu-west-1"),
            backend(old1, "eu", "eu-west-1"),
        ]
        async with router(fleet_backends, config=cfg, backends_file=path) as r:
            run = asyncio.create_task(_hammer(r.url, 1200, 8))
            await wait_until(lambda: old0.total + old1.total > 150, timeout=20)
            write(old0, old1, new0)  # rollout: surge a new replica
            await wait_until(lambda: new0.total > 20, timeout=20, what="new replica used")
            write(old1, new0)  # old0 removed from the endpoints ...
            await wait_until(lambda: len(r.state.fleet.backends) == 2, timeout=5)
            # ... drained (what the router had in flight there finished) and only then
            # stopped, as a preStop delay does.
            await wait_until(lambda: r.state.load.passive.inflight("eu/0") == 0, timeout=5)
            seen = old0.total
            await old0.stop()
            write(new0)  # scale down to one
            await wait_until(lambda: len(r.state.fleet.backends) == 1, timeout=5)
            statuses = await run
        assert statuses.count(200) == len(statuses)
        assert old0.total == seen  # nothing sent to the removed replica afterwards
