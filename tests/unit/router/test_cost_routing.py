"""Cost-aware routing: each pool's cost per million tokens (`policy.cost`) from its live
figure (`status.pools[].costPerMillionTokens`), else its list price; the floor and the
ceiling; the score's cost term; residency untouched by cost."""

from __future__ import annotations

import math
from typing import Any

import pytest

from factory_contract.status import PoolStatusView, RegionView
from factory_router.discovery.kube import fleet_from_objects
from factory_router.policy.config import CostConfig, EjectionConfig, ScoringConfig
from factory_router.policy.cost import Cost, PoolPrice, resolve_costs
from factory_router.policy.fleet import Backend, Fleet, Region, RttMatrix, build_fleet
from factory_router.policy.health import Ejector
from factory_router.policy.policies import PolicyName, Ranker, RouteRequest
from factory_router.policy.route import plan
from tests.unit.router.test_policy_routing import View

CFG = CostConfig()
NOMINAL_K = 1e6 / (3600 * CFG.nominal_tokens_per_second)  # USD/Mtok per USD/replica-hour


def resolve(**prices: PoolPrice) -> dict[str, Cost]:
    return resolve_costs(prices, CFG)


# --- policy.cost ---------------------------------------------------------------------------


def test_nothing_live_keeps_the_list_price_order_at_the_nominal_throughput() -> None:
    costs = resolve(h100=PoolPrice("m", None, 13.76), inf2=PoolPrice("m", None, 2.38))
    assert costs["h100"] == Cost(pytest.approx(13.76 * NOMINAL_K), "list")
    assert costs["inf2"] == Cost(pytest.approx(2.38 * NOMINAL_K), "list")


def test_a_live_figure_is_used_and_calibrates_the_pools_without_one() -> None:
    costs = resolve(
        a=PoolPrice("m", 1.0, 10.0),  # 0.1 USD/Mtok per USD/replica-hour
        b=PoolPrice("m", 3.0, 10.0),  # 0.3
        new=PoolPrice("m", None, 5.0),  # not serving yet: 5 x median(0.1, 0.3)
        other=PoolPrice("n", None, 5.0),  # no live pool of its model: the fleet's median
    )
    assert costs["a"] == Cost(1.0, "live") and costs["b"] == Cost(3.0, "live")
    assert costs["new"] == Cost(pytest.approx(1.0), "list")
    assert costs["other"] == Cost(pytest.approx(1.0), "list")


def test_the_models_own_pools_calibrate_before_the_fleets() -> None:
    costs = resolve(
        big=PoolPrice("70b", 8.0, 10.0),  # 0.8
        small=PoolPrice("8b", 1.0, 10.0),  # 0.1
        small_new=PoolPrice("8b", None, 10.0),
    )
    assert costs["small_new"] == Cost(pytest.approx(1.0), "list")


def test_a_zero_figure_is_floored_and_does_not_calibrate() -> None:
    costs = resolve(zero=PoolPrice("m", 0.0, 10.0), b=PoolPrice("m", 2.0, 10.0))
    # k = 0.2 from b alone: zero's estimate is 2.0, its floor a quarter of it
    assert costs["zero"] == Cost(pytest.approx(CFG.floor_fraction * 2.0), "floored")
    assert costs["b"] == Cost(2.0, "live")
    # every live figure 0: nothing credible to calibrate with, the nominal conversion
    alone = resolve(zero=PoolPrice("m", 0.0, 10.0))
    assert alone["zero"] == Cost(pytest.approx(CFG.floor_fraction * 10.0 * NOMINAL_K), "floored")


def test_a_trickle_is_capped() -> None:
    costs = resolve(
        busy=PoolPrice("m", 1.0, 10.0),
        busy2=PoolPrice("m", 1.2, 10.0),
        trickle=PoolPrice("m", 900.0, 10.0),  # a few tokens on a whole replica-hour
    )
    # k = median(0.1, 0.12, 90) = 0.12: estimate 1.2, ceiling 4x
    assert costs["trickle"] == Cost(pytest.approx(CFG.ceiling_multiple * 1.2), "capped")


def test_a_free_pool_costs_nothing_and_an_unpriced_one_is_neutral() -> None:
    costs = resolve(
        free=PoolPrice("m", None, 0.0),
        a=PoolPrice("m", 1.0, 10.0),
        b=PoolPrice("m", 3.0, 10.0),
        unpriced=PoolPrice("m", None, None),
        unpriced_live=PoolPrice("m", 0.0, None),
        alone=PoolPrice("x", None, None),
    )
    assert costs["free"] == Cost(0.0, "list")
    assert costs["unpriced"] == Cost(1.0, "unpriced")  # median of free, a, b: 0, 1, 3
    assert costs["unpriced_live"] == Cost(pytest.approx(0.25), "floored")
    assert costs["alone"] == Cost(0.0, "none")


# --- the score's cost term -----------------------------------------------------------------


def _fleet(*backends: Backend) -> Fleet:
    return build_fleet(
        [Region("eu-west-1", "EU"), Region("eu-central-1", "EU"), Region("us-east-1", "US")],
        backends,
    )


def _backend(bid: str, region: str, cost: float, source: str = "live") -> Backend:
    return Backend(
        id=bid, model="m", pool=bid, region=region, url=f"http://{bid}", cost=cost,
        cost_source=source,
    )  # fmt: skip


def _order(f: Fleet, weight: float, allowed: frozenset[str] = frozenset({"EU"})) -> list[str]:
    p = plan(
        f,
        RouteRequest("m", allowed, "eu-west-1"),
        ranker=Ranker(PolicyName.SCORE, ScoringConfig(cost_weight_ms=weight)),
        view=View(),
        ejector=Ejector(EjectionConfig()),
        now=0.0,
        explain=True,
    )
    return [r.backend.id for r in p.ordered]


def test_the_cheaper_pool_per_token_wins_at_equal_latency_and_load() -> None:
    # Same region, same list price, no load: only the live cost per token differs.
    f = _fleet(_backend("dear", "eu-west-1", 3.0), _backend("cheap", "eu-west-1", 1.0))
    assert _order(f, 0.0)[0] == "dear"  # a tie without the cost term: the fleet's order
    assert _order(f, 5.0) == ["cheap", "dear"]


def test_the_cost_term_is_in_ms_per_usd_per_million_tokens() -> None:
    # cheap is 25 ms further away (eu-central-1) and 2 USD/Mtok cheaper: it wins once a
    # USD per million tokens is worth more than 12.5 ms.
    near = _backend("near", "eu-west-1", 3.0)
    far = _backend("far", "eu-central-1", 1.0)
    f = build_fleet(
        [Region("eu-west-1", "EU"), Region("eu-central-1", "EU")],
        [near, far],
        RttMatrix.from_nested({"eu-west-1": {"eu-central-1": 25}}),
    )
    assert _order(f, 12.0)[0] == "near"
    assert _order(f, 13.0)[0] == "far"
    p = plan(
        f,
        RouteRequest("m", frozenset({"EU"}), "eu-west-1"),
        ranker=Ranker(PolicyName.SCORE, ScoringConfig(cost_weight_ms=13.0)),
        view=View(),
        ejector=Ejector(EjectionConfig()),
        now=0.0,
        explain=True,
    )
    parts = {r["backend"]: r["parts"] for r in p.explanation}
    assert parts["far"]["cost_ms"] == 13.0 and parts["far"]["cost_per_mtok"] == 1.0
    assert parts["far"]["cost_source"] == "live"


def test_a_floored_zero_does_not_draw_traffic_past_a_modest_latency_gap() -> None:
    # zero's live figure is 0, floored to a quarter of its estimate (0.5 with b at 2.0):
    # 1.5 USD/Mtok x 10 ms = 15 ms of advantage, less than the 25 ms to eu-central-1.
    costs = resolve(zero=PoolPrice("m", 0.0, 10.0), b=PoolPrice("m", 2.0, 10.0))
    zero = _backend("zero", "eu-central-1", costs["zero"].per_mtok, costs["zero"].source)
    b = _backend("b", "eu-west-1", costs["b"].per_mtok)
    f = build_fleet(
        [Region("eu-west-1", "EU"), Region("eu-central-1", "EU")],
        [zero, b],
        RttMatrix.from_nested({"eu-west-1": {"eu-central-1": 25}}),
    )
    assert _order(f, 10.0)[0] == "b"
    # unfloored, the 0 would have won: 2.0 x 10 ms = 20 ms ... and at any larger weight
    unfloored = build_fleet(
        [Region("eu-west-1", "EU"), Region("eu-central-1", "EU")],
        [_backend("zero", "eu-central-1", 0.0), b],
        RttMatrix.from_nested({"eu-west-1": {"eu-central-1": 25}}),
    )
    assert _order(unfloored, 13.0)[0] == "zero" and _order(f, 13.0)[0] == "b"


@pytest.mark.parametrize("weight", [0.0, 1.0, 1e6])
def test_cost_never_makes_a_non_compliant_backend_a_candidate(weight: float) -> None:
    free_us = _backend("free-us", "us-east-1", 0.0)
    dear_eu = _backend("dear-eu", "eu-west-1", 1e6)
    f = _fleet(free_us, dear_eu)
    assert _order(f, weight) == ["dear-eu"]
    # nothing compliant: nothing ordered, however free the others are
    assert _order(_fleet(free_us, _backend("x", "nowhere-1", 0.0)), weight) == []


# --- contract view and discovery -----------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "read"),
    [(0.42, 0.42), (3, 3.0), (0, 0.0), (-1.0, None), ("0.4", None), (True, None),
     (float("nan"), None), (float("inf"), None), (None, None)],
)  # fmt: skip
def test_the_view_reads_the_cost_leniently(wire: Any, read: float | None) -> None:
    view = PoolStatusView.model_validate({"name": "p", "costPerMillionTokens": wire})
    assert view.cost_per_million_tokens == read


def _region(name: str, jurisdiction: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"jurisdiction": jurisdiction, **spec}}


def _factory(pools: list[tuple[str, str, str, Any]]) -> dict[str, Any]:
    """(pool, region, accelerator type, costPerMillionTokens or "absent")"""
    return {
        "metadata": {"name": "llama", "namespace": "ml"},
        "spec": {
            "model": {"name": "m"},
            "pools": [
                {"name": p, "region": r, "accelerator": {"kind": "x", "type": t, "count": 2}}
                for p, r, t, _ in pools
            ],
        },
        "status": {
            "pools": [
                {"name": p, "region": r, "jurisdiction": "EU"}
                | ({} if c == "absent" else {"costPerMillionTokens": c})
                for p, r, _, c in pools
            ]
        },
    }


def _slice(service: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{service}-x", "namespace": "ml",
                     "labels": {"kubernetes.io/service-name": service}},
        "ports": [{"name": "http", "port": 8000}],
        "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": f"{service}-0"}}],
    }  # fmt: skip


def test_discovery_prices_backends_from_the_pools_live_cost() -> None:
    regions = [
        _region("eu-west-1", "EU", pricing={"H100": 5.0, "inf2": 1.0}),
        _region("eu-central-1", "EU", pricing={"H100": 5.0}, endpoint="https://fra.example"),
    ]
    factory = _factory(
        [
            ("dub", "eu-west-1", "H100", 2.5),  # 10/h: k = 0.25
            ("inf", "eu-west-1", "inf2", "absent"),  # 2/h, not serving yet: 0.5
            ("bad", "eu-west-1", "H100", "lots"),  # unreadable: as if absent, 2.5
            ("fra", "eu-central-1", "H100", 0.0),  # floored: a quarter of 2.5
        ]
    )
    slices = [_slice("llama-dub", "10.0.0.1"), _slice("llama-inf", "10.0.0.2"),
              _slice("llama-bad", "10.0.0.3")]  # fmt: skip
    fleet = fleet_from_objects(regions, [factory], slices, [], local_region="eu-west-1")
    by_pool = {b.pool: b for b in fleet.backends}
    assert (by_pool["llama-dub"].cost, by_pool["llama-dub"].cost_source) == (2.5, "live")
    assert by_pool["llama-inf"].cost == pytest.approx(0.5)
    assert by_pool["llama-inf"].cost_source == "list"
    assert by_pool["llama-bad"].cost == pytest.approx(2.5)
    assert by_pool["llama-bad"].cost_source == "list"
    fra = by_pool["llama-fra"]  # reached through eu-central-1's endpoint
    assert fra.via_endpoint and fra.cost == pytest.approx(0.625) and fra.cost_source == "floored"
    # the hold's pools keep the list price per replica-hour
    assert {p.name: p.cost for p in fleet.pools}["inf"] == pytest.approx(2.0)


def test_discovery_without_any_live_cost_keeps_the_list_price_order() -> None:
    regions = [_region("eu-west-1", "EU", pricing={"H100": 5.0, "inf2": 1.0})]
    factory = _factory(
        [("dub", "eu-west-1", "H100", "absent"), ("inf", "eu-west-1", "inf2", "absent")]
    )
    slices = [_slice("llama-dub", "10.0.0.1"), _slice("llama-inf", "10.0.0.2")]
    fleet = fleet_from_objects(regions, [factory], slices, [])
    by_pool = {b.pool: b for b in fleet.backends}
    assert by_pool["llama-dub"].cost == pytest.approx(10.0 * NOMINAL_K)
    assert by_pool["llama-inf"].cost == pytest.approx(2.0 * NOMINAL_K)


def test_a_price_that_is_not_a_finite_number_at_least_0_reads_as_no_price() -> None:
    """FleetRegion pricing the CRD would refuse (a negative, NaN, inf: say written before its
    validation, or by hand) never becomes a negative or non-finite cost that draws every
    request, nor skews the calibration of the other pools; likewise a negative count."""
    regions = [
        _region("eu-west-1", "EU", pricing={"H100": 5.0, "neg": -5.0, "nan": float("nan"),
                                            "inf": float("inf"), "big": 1e308}),
    ]  # fmt: skip
    view = RegionView.model_validate(regions[0])
    assert view.spec.pricing == {"H100": 5.0, "big": 1e308}
    factory = _factory(
        [("dub", "eu-west-1", "H100", 2.5), ("neg", "eu-west-1", "neg", 2.5),
         ("nan", "eu-west-1", "nan", 2.5), ("inf", "eu-west-1", "inf", "absent"),
         ("big", "eu-west-1", "big", 2.5), ("cnt", "eu-west-1", "H100", 2.5)]
    )  # fmt: skip
    factory["spec"]["pools"][-1]["accelerator"]["count"] = -2
    slices = [_slice(f"llama-{p}", f"10.0.0.{i}")
              for i, p in enumerate(("dub", "neg", "nan", "inf", "big", "cnt"))]  # fmt: skip
    fleet = fleet_from_objects(regions, [factory], slices, [])
    for b in fleet.backends:
        assert math.isfinite(b.cost) and b.cost >= 0, (b.pool, b.cost, b.cost_source)
    for p in fleet.pools:
        assert math.isfinite(p.cost) and p.cost >= 0, (p.name, p.cost)
    by_pool = {b.pool: b for b in fleet.backends}
    assert (by_pool["llama-dub"].cost, by_pool["llama-dub"].cost_source) == (2.5, "live")
