"""Load signals: PromQL results to samples, staleness, and the poller against a fake
Prometheus HTTP API on 127.0.0.1 (the real prometheus-api-client in its thread)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from aiohttp import web

from factory_router.policy.config import RouterConfig, ScoringConfig, Timeouts
from factory_router.policy.fleet import Backend
from factory_router.signals.load import LoadState
from factory_router.signals.prometheus import QUERIES, Snapshot, snapshot_from_results
from factory_router.signals.rtt import RttEstimates
from tests.unit.router.router_testkit import (
    auth,
    engines,
    explain,
    readiness,
    router,
    wait_until,
)


def vec(value: str, pod: str, pool: str = "eu-a", region: str = "eu-west-1") -> dict[str, Any]:
    return {
        "metric": {"pod": pod, "pool": pool, "region": region, "namespace": "ml"},
        "value": [0, value],
    }


RESULTS = {
    "waiting": [vec("2", "p0"), vec("0", "p1")],
    "running": [vec("10", "p0"), vec("4", "p1")],
    "kv": [vec("0.9", "p0"), vec("0.1", "p1")],
    "ttft": [vec("0.25", "p0"), vec("NaN", "p1")],
}


def test_snapshot_from_results() -> None:
    snap = snapshot_from_results(RESULTS, 10.0)
    p0 = snap.by_pod["p0"]
    assert (p0.waiting, p0.running, p0.kv_usage, p0.ttft_ms) == (2, 10, 0.9, 250.0)
    assert snap.by_pod["p1"].ttft_ms is None
    pool = snap.by_pool[("eu-a", "eu-west-1")]
    assert pool.running == 7 and pool.ttft_ms == 250.0


def test_load_state_staleness_and_inflight_at_snapshot() -> None:
    now = [100.0]
    state = LoadState(stale_after=5.0, clock=lambda: now[0])
    b = Backend(id="x", model="m", pool="eu-a", region="eu-west-1", url="u", pod="p0")
    nopod = Backend(id="y", model="m", pool="eu-a", region="eu-west-1", url="v")
    assert state.sample(b) is None and state.age() is None
    state.passive.start("x")
    state.install(snapshot_from_results(RESULTS, 100.0))
    assert state.inflight_at_snapshot("x") == 1
    assert state.sample(b) is not None and state.sample(b).running == 10  # type: ignore[union-attr]
    assert state.sample(nopod).running == 7  # type: ignore[union-attr]
    now[0] = 106.0
    assert not state.fresh() and state.sample(b) is None


def test_capacity_is_configured_else_learned_from_a_lasting_queue() -> None:
    state = LoadState(stale_after=5.0, clock=lambda: 100.0)
    p0 = Backend(id="x", model="m", pool="eu-a", region="eu-west-1", url="u", pod="p0")
    p1 = Backend(id="y", model="m", pool="eu-a", region="eu-west-1", url="v", pod="p1")
    sized = Backend(id="z", model="m", pool="eu-a", region="eu-west-1", url="w", max_num_seqs=8)

    def snap(p0_waiting: str, p0_running: str) -> Snapshot:
        results = {**RESULTS, "waiting": [vec(p0_waiting, "p0"), vec("0", "p1")],
                   "running": [vec(p0_running, "p0"), vec("4", "p1")]}  # fmt: skip
        return snapshot_from_results(results, 100.0)

    state.install(snap("1", "1"))  # a request between two scheduler steps: not a limit
    assert state.capacity(p0) is None
    state.install(snap("0", "3"))
    state.install(snap("2", "10"))
    assert state.capacity(p0) is None  # one snapshot with a queue is not enough
    state.install(snap("3", "9"))
    assert state.capacity(p0) == 10  # queued twice in a row: full at 10
    state.install(snap("0", "12"))
    assert state.capacity(p0) == 12  # it ran 12: the limit is at least that
    assert state.capacity(p1) is None  # nothing waited: no evidence of a limit
    assert state.capacity(sized) == 8


def test_slot_holding_time_and_first_bytes_as_rtt_samples() -> None:
    state = LoadState(stale_after=5.0, clock=lambda: 100.0)
    b = Backend(id="x", model="m", pool="eu-a", region="eu-central-1", url="u")
    state.observe_first_byte(b, 40.0, streamed=True)
    state.observe_completion(b, duration_ms=540.0, ttfb_ms=40.0, streamed=True)
    assert state.observed_duration_ms("x") == 500.0  # first byte to end: the slot was held
    state.observe_completion(b, duration_ms=1500.0, ttfb_ms=1490.0, streamed=False)
    assert state.observed_duration_ms("x") == 500.0 + 0.2 * (1500.0 - 500.0)
    assert state.measured_rtt_ms("eu-central-1") == 40.0  # an upper bound of the RTT


def test_rtt_estimate_is_the_minimum_over_the_window() -> None:
    now = [0.0]
    est = RttEstimates(window_seconds=10.0, clock=lambda: now[0])
    assert est.rtt_ms("eu-west-1") is None
    for t, ms in ((0, 30.0), (1, 25.0), (2, 90.0), (3, 27.0)):
        now[0] = t
        est.observe("eu-west-1", ms)
    assert est.rtt_ms("eu-west-1") == 25.0
    now[0] = 11.5  # the 25 ms sample (t=1) left the window; 27 (t=3) is the best left
    assert est.rtt_ms("eu-west-1") == 27.0
    now[0] = 13.5  # everything is old: nothing measured lately
    assert est.rtt_ms("eu-west-1") is None
    est.observe("eu-west-1", 60.0)  # the path got slower: followed within one window
    assert est.regions() == {"eu-west-1": 60.0}


@asynccontextmanager
async def fake_prometheus(values: dict[str, list[dict[str, Any]]]) -> AsyncIterator[str]:
    by_query = {q: values[name] for name, q in QUERIES.items()}

    async def query(request: web.Request) -> web.Response:
        q = request.query.get("query", "")
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": by_query.get(q, [])}}
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_poller_feeds_scoring_then_degrades_when_prometheus_dies() -> None:
    cfg = RouterConfig(
        prometheus_interval=0.05,
        scoring=ScoringConfig(snapshot_stale_seconds=0.5),
        timeouts=Timeouts(prometheus_query=0.5),
    )
    async with engines(2) as (e0, e1):
        backends = [
            Backend(id="a", model="m", pool="eu-a", region="eu-west-1", url=e0.url, pod="p0"),
            Backend(id="b", model="m", pool="eu-a", region="eu-west-1", url=e1.url, pod="p1"),
        ]
        prometheus = AsyncExitStack()
        prom = await prometheus.enter_async_context(fake_prometheus(RESULTS))
        async with (
            prometheus,
            router(backends, config=cfg, prometheus_url=prom) as r,
            httpx.AsyncClient(base_url=r.url) as c,
        ):
            await wait_until(r.state.load.fresh, timeout=5, what="first snapshot")
            ready = await readiness(r)
            assert ready["status"] == "ok" and ready["load_data"]["source"] == "prometheus+passive"
            rows = {row["backend"]: row for row in await explain(r, "eu-only", "m")}
            assert rows["b"]["verdict"] == "chosen"  # p0 is busier, KV nearly full
            assert rows["a"]["parts"]["kv_penalty_ms"] > 0
            assert rows["a"]["parts"]["load_source"] == "prometheus+inflight"
            await prometheus.aclose()  # Prometheus dies; routing goes on, on passive signals
            started = time.monotonic()
            await wait_until(lambda: not r.state.load.fresh(), timeout=5, what="stale")
            assert time.monotonic() - started < 5
            resp = await c.post(
                "/v1/chat/completions", json={"model": "m", "messages": []}, headers=auth("eu")
            )
            assert resp.status_code == 200
            ready = await readiness(r)
            assert ready["status"] == "degraded" and ready["load_data"]["stale"]
