"""Scale from zero in the router (issue 17, item 3): the pure parts of holding a request
(`policy.hold`, `Fleet.waking`, discovery of pools at zero) and the hold in the proxy path
(`app.hold`): served once a backend is ready, 503 with Retry-After when full or waited out,
today's immediate error when no compliant pool can come, the pending gauge on the admin port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from factory_router.discovery.kube import fleet_from_objects
from factory_router.policy.config import HoldConfig, RouterConfig, Timeouts
from factory_router.policy.errors import BadRequest
from factory_router.policy.fleet import Backend, Pool, RttMatrix, build_fleet
from factory_router.policy.hold import (
    HoldBook,
    PendingKey,
    choose_pool,
    has_coming_replica,
    hold_timeout,
)
from tests.unit.router.router_testkit import (
    REGIONS,
    auth,
    backend,
    engines,
    router,
    scrape,
    wait_until,
)

EU = frozenset({"EU"})
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
RTT = RttMatrix.from_nested({"eu-west-1": {"us-east-1": 80, "eu-central-1": 25}})


def _pool(name: str, region: str | None = "eu-west-1", **kw: Any) -> Pool:
    base = {"namespace": "ns", "factory": "f", "model": "m", "wakeable": True}
    return Pool(name=name, region=region, service=f"f-{name}", **{**base, **kw})


def _key(pool: str, model: str = "m") -> PendingKey:
    return PendingKey("ns", "f", pool, "eu-west-1", "EU", model)


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, 120.0), ("5", 5.0), (" 2.5 ", 2.5), ("500", 120.0), ("0", 0.0)],
)
def test_the_clients_hold_timeout_only_narrows_the_routers(
    header: str | None, expected: float
) -> None:
    assert hold_timeout(header, 120.0) == expected


@pytest.mark.parametrize("header", ["-1", "soon", "nan", "inf", ""])
def test_a_malformed_hold_timeout_is_a_bad_request(header: str) -> None:
    with pytest.raises(BadRequest) as refused:
        hold_timeout(header, 120.0)
    assert refused.value.param == "x-factory-hold-timeout"


def test_a_held_request_counts_on_the_pool_that_should_wake() -> None:
    def rtt(region: str | None) -> float:
        return RTT.rtt_ms("eu-west-1", region, RouterConfig().scoring)

    dub = _pool("dub", cost=4.0, max_num_seqs=8)  # 0.5 per slot
    fra = _pool("fra", "eu-central-1", cost=2.0, max_num_seqs=8)  # 0.25 per slot, 25 ms away
    iad = _pool("iad", "us-east-1", cost=0.1, max_num_seqs=8)  # cheapest, 80 ms away
    # Within 30 ms of the nearest: the cheaper per request slot; beyond: nearer wins.
    assert choose_pool([dub, fra, iad], rtt) is fra
    assert choose_pool([dub, iad], rtt) is dub
    # A pool already starting takes the demand before any other is woken.
    starting = replace(dub, desired_replicas=1)
    assert choose_pool([starting, fra, iad], rtt) is starting
    # Equal in all else: by name; an unknown batch capacity counts as 256.
    assert choose_pool([_pool("b"), _pool("a")], rtt).name == "a"
    assert choose_pool([_pool("a", cost=1.0), _pool("b", cost=1.0, max_num_seqs=8)], rtt).name == (
        "a"
    )


def test_a_held_request_waits_for_a_replica_that_is_coming_not_one_that_is_going() -> None:
    going = Backend("old", "m", "f-dub", "eu-west-1", "http://x", terminating=True)
    coming = replace(going, id="new", terminating=False)
    assert not has_coming_replica([going])
    assert has_coming_replica([going, coming]) and has_coming_replica([coming])


def test_the_hold_book_is_bounded_per_model_and_leaves_no_series_behind() -> None:
    book = HoldBook(max_requests=2)
    assert book.admit(_key("dub")) and book.admit(_key("dub"))
    assert not book.admit(_key("fra"))  # the model's queue is full, whatever the pool
    assert book.admit(_key("dub", model="other"))  # another model has its own
    assert dict(book.pending()) == {_key("dub"): 2, _key("dub", model="other"): 1}
    book.move(_key("dub"), _key("fra"))
    assert dict(book.pending()) == {_key("dub"): 1, _key("fra"): 1, _key("dub", "other"): 1}
    book.release(_key("fra"))
    book.release(_key("dub"))
    book.release(_key("dub", model="other"))
    assert dict(book.pending()) == {} and book.held("m") == 0
    assert book.admit(_key("dub"))  # room again


def test_only_compliant_pools_without_a_serving_replica_are_waited_for() -> None:
    serving = Backend("b", "m", "f-fra", "eu-central-1", "http://x", namespace="ns")
    not_serving = replace(serving, id="c", pool="f-dub", serving=False)
    pools = [
        _pool("dub"),  # at zero; its one endpoint is not serving yet (starting)
        _pool("fra", "eu-central-1"),  # has a serving replica: plan() would find it
        _pool("iad", "us-east-1"),  # US: not for an EU-only request
        _pool("nowhere", "mars-1"),  # unknown region: never
        _pool("pinned", wakeable=False),  # nothing wakes it
        _pool("fresh", wakeable=False, desired_replicas=1),  # starting: worth the wait
        _pool("other", model="m2"),
    ]
    fleet = build_fleet(REGIONS, [serving, not_serving], RTT, pools)
    assert [p.name for p in fleet.waking("m", EU)] == ["dub", "fresh"]
    assert [p.name for p in fleet.waking("m", frozenset({"US"}))] == ["iad"]
    assert fleet.waking("m", frozenset({"UK"})) == []


def test_discovery_keeps_the_pools_of_the_factories_status() -> None:
    regions: list[Mapping[str, Any]] = [
        {"metadata": {"name": "eu-west-1"}, "spec": {"jurisdiction": "EU", "pricing": {"H100": 4}}}
    ]
    spec_pool = {"accelerator": {"type": "H100", "count": 2}, "replicas": {"min": 0, "max": 2}}
    factory: Mapping[str, Any] = {
        "metadata": {"namespace": "ns", "name": "f"},
        "spec": {
            "model": {"name": "m"},
            "engine": {"args": {"maxNumSeqs": 16}},
            "autoscaling": {},
            "pools": [{"name": "dub", **spec_pool}, {"name": "blk", **spec_pool}],
        },
        "status": {
            "pools": [
                {"name": "dub", "region": "eu-west-1", "state": "Progressing",
                 "desiredReplicas": 0, "readyReplicas": 0},
                {"name": "blk", "region": "us-east-1", "state": "Blocked",
                 "desiredReplicas": 0, "readyReplicas": 0},
            ]
        },
    }  # fmt: skip
    fleet = fleet_from_objects(regions, [factory], [], [])
    assert fleet.pools == (Pool("ns", "f", "dub", "m", "eu-west-1", "f-dub", 0, True, 8.0, 16),)
    off = {**factory, "spec": {**factory["spec"], "autoscaling": {"policy": "off"}}}
    assert not fleet_from_objects(regions, [off], [], []).pools[0].wakeable
    plain = {**factory, "spec": {k: v for k, v in factory["spec"].items() if k != "autoscaling"}}
    assert not fleet_from_objects(regions, [plain], [], []).pools[0].wakeable


# --- the hold in the proxy path ---------------------------------------------------------------


def _pending(metrics: str) -> dict[tuple[str, ...], float]:
    out = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "factory_router_pending_requests":
            for s in family.samples:
                labels = ("namespace", "factory", "pool", "region", "jurisdiction", "model")
                out[tuple(s.labels[k] for k in labels)] = s.value
    return out


def _held(metrics: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "factory_router_held_requests":
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[s.labels["outcome"]] = s.value
    return out


def _config(**hold: Any) -> RouterConfig:
    return RouterConfig(
        timeouts=Timeouts(first_byte=5.0, grace_period=2.0),
        hold=HoldConfig(**{"poll_seconds": 0.02, **hold}),
    )


async def test_a_held_request_is_served_once_its_pool_is_ready() -> None:
    async with engines(1) as [engine], router([], config=_config(timeout_seconds=30)) as r:
        at_zero = build_fleet(REGIONS, [], RTT, [_pool("dub"), _pool("iad", "us-east-1")])
        r.state.set_fleet(at_zero)
        async with httpx.AsyncClient(base_url=r.url, timeout=30) as c:
            started = time.monotonic()
            held = [
                asyncio.create_task(c.post("/v1/chat/completions", json=CHAT, headers=auth("eu")))
                for _ in range(3)
            ]

            async def counted() -> bool:
                return _pending(await scrape(r)) == {("ns", "f", "dub", "eu-west-1", "EU", "m"): 3}

            await wait_until(counted, 5, "every request held, counted on dub, none on iad")
            assert not any(t.done() for t in held)
            ready = replace(backend(engine, "f-dub", "eu-west-1"), namespace="ns", factory="f")
            r.state.set_fleet(build_fleet(REGIONS, [ready], RTT, at_zero.pools))
            answers = await asyncio.gather(*held)
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert {a.headers["x-factory-pool"] for a in answers} == {"f-dub"}
        assert time.monotonic() - started < 10
        metrics = await scrape(r)
        assert _pending(metrics) == {}
        assert _held(metrics) == {"served": 3}


async def test_a_hold_that_ends_answers_503_with_retry_after_in_openais_shape() -> None:
    config = _config(timeout_seconds=0.3, retry_after_seconds=7)
    async with router([], config=config) as r:
        r.state.set_fleet(build_fleet(REGIONS, [], RTT, [_pool("dub")]))
        async with httpx.AsyncClient(base_url=r.url, timeout=10) as c:
            started = time.monotonic()
            answer = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
            waited = time.monotonic() - started
            # The client's header narrows the router's bound.
            quick = await c.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={**auth("eu"), "x-factory-hold-timeout": "0"},
            )
            bad = await c.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={**auth("eu"), "x-factory-hold-timeout": "later"},
            )
        assert answer.status_code == 503 and quick.status_code == 503
        assert 0.3 <= waited < 3
        assert answer.headers["retry-after"] == quick.headers["retry-after"] == "7"
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == ("service_unavailable", "scaling_from_zero")
        assert bad.status_code == 400 and "retry-after" not in bad.headers
        assert _held(await scrape(r)) == {"timeout": 2}


async def test_a_full_queue_answers_503_at_once() -> None:
    async with router([], config=_config(max_requests=1, timeout_seconds=2)) as r:
        r.state.set_fleet(build_fleet(REGIONS, [], RTT, [_pool("dub")]))
        async with httpx.AsyncClient(base_url=r.url, timeout=10) as c:
            first = asyncio.create_task(
                c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
            )
            await wait_until(lambda: r.state.holds.book.held("m") == 1, 5, "one request held")
            started = time.monotonic()
            second = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
            assert time.monotonic() - started < 1
            assert not first.done()
            assert (await first).status_code == 503
        assert second.status_code == 503 and second.headers["retry-after"] == "30"
        assert second.json()["error"]["code"] == "scaling_from_zero"
        assert _held(await scrape(r)) == {"full": 1, "timeout": 1}


async def test_nothing_is_held_that_cannot_be_served_in_the_tenants_jurisdictions() -> None:
    async with router([], config=_config(timeout_seconds=30)) as r:
        # Only a US pool at zero, and a pool nothing wakes: an EU-only request is refused
        # at once, as before; a US one is held.
        pools = [_pool("iad", "us-east-1"), _pool("pinned", wakeable=False)]
        r.state.set_fleet(build_fleet(REGIONS, [], RTT, pools))
        async with httpx.AsyncClient(base_url=r.url, timeout=10) as c:
            started = time.monotonic()
            eu = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
            narrowed = await c.post(
                "/v1/chat/completions",
                json=CHAT,
                headers={**auth("global"), "x-factory-residency": "EU"},
            )
            unknown = await c.post(
                "/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=auth("us")
            )
            assert time.monotonic() - started < 2
            us = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT, headers=auth("us")))
            await wait_until(lambda: r.state.holds.book.held("m") == 1, 5, "one request held")
            assert _pending(await scrape(r)) == {("ns", "f", "iad", "us-east-1", "US", "m"): 1}
            # The factory goes away while the request waits: the residency filter's error.
            r.state.set_fleet(build_fleet(REGIONS, [], RTT, []))
            gone = await us
        for answer in (eu, narrowed, unknown, gone):
            assert answer.status_code == 404, answer.text
            assert answer.json()["error"]["code"] == "model_not_found"
            assert "retry-after" not in answer.headers
        assert _held(await scrape(r)) == {"gone": 1}
