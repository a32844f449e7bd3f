"""``plan_jurisdictions``: growth goes to the pool the router prefers (near, then cheap),
never across jurisdictions, never to a pool the factory's residency forbids; CapacityPressure
when every pool of a jurisdiction is at its ceiling."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from factory_operator.api.autoscaling import POLICIES, effective_autoscaling
from factory_operator.plan.autoscale import PoolLoad, PoolObserved, PoolShape, ScaleState, decide
from factory_operator.plan.jurisdiction import (
    NEAR_MS,
    Candidate,
    plan_jurisdictions,
    replica_price,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
BALANCED = effective_autoscaling(None, "nvidia")  # step 4; 80 requests per replica below


def candidate(
    key: str,
    jurisdiction: str | None = "EU",
    *,
    current: int = 2,
    load: PoolLoad | None = None,
    lo: int = 1,
    hi: int = 10,
    allowed: bool = True,
    distance_ms: float | None = 10.0,
    price: float | None = 8.0,
    policy: str = "balanced",
) -> Candidate:
    shape = PoolShape(min=lo, max=hi, max_num_seqs=100)
    config = POLICIES[policy] if policy != "balanced" else BALANCED  # type: ignore[index]
    observed = PoolObserved(current, current, load or PoolLoad(running=80.0 * current))
    decision = decide(shape, config, observed, ScaleState(), NOW)
    return Candidate(
        key=key,
        jurisdiction=jurisdiction,
        allowed=allowed,
        shape=shape,
        decision=decision,
        up_step=config.up_max_step_replicas,
        distance_ms=distance_ms,
        price_per_hour=price,
    )


SURGE = PoolLoad(running=160, waiting=160)  # 320 requests on 2 replicas: 4 wanted


def test_growth_goes_to_the_cheaper_of_two_equally_near_pools_not_to_both() -> None:
    west = candidate("eu-west", load=SURGE, distance_ms=10, price=8.0)
    central = candidate("eu-central", load=SURGE, distance_ms=10 + NEAR_MS - 5, price=4.0)
    assert west.decision.desired == central.decision.desired == 4  # each alone would grow
    plan = plan_jurisdictions([west, central], NOW)
    assert plan.order["EU"] == ("eu-central", "eu-west")
    assert plan.decisions["eu-central"].desired == 6  # all 4 replicas' worth, one step
    west_after = plan.decisions["eu-west"]
    assert (west_after.desired, west_after.reason) == (2, "Deferred")
    assert west_after.state.last_scale_time is None  # no change recorded for it
    assert plan.decisions["eu-central"].state.last_scale_direction == "Up"
    assert plan.pressure == ()


def test_a_nearer_pool_comes_before_a_cheaper_far_one() -> None:
    near = candidate("eu-west", load=SURGE, distance_ms=10, price=8.0)
    far = candidate("eu-far", load=SURGE, distance_ms=120, price=1.0)
    plan = plan_jurisdictions([far, near], NOW)
    assert plan.order["EU"] == ("eu-west", "eu-far")


def test_growth_beyond_the_preferred_pools_max_goes_to_the_next() -> None:
    small = candidate("eu-central", load=SURGE, hi=3, price=4.0)
    big = candidate("eu-west", load=SURGE, price=8.0)
    plan = plan_jurisdictions([small, big], NOW)
    assert plan.decisions["eu-central"].desired == 3
    assert plan.decisions["eu-west"].desired == 5  # 320 asked - 80 taken = 240: 3 more
    assert plan.pressure == ()


def test_capacity_pressure_when_every_pool_of_the_jurisdiction_is_at_max() -> None:
    west = candidate("eu-west", load=SURGE, hi=2, price=8.0)
    central = candidate("eu-central", load=SURGE, hi=2, price=4.0)
    us = candidate("us-east", "US", load=PoolLoad(running=20), price=2.0)
    plan = plan_jurisdictions([west, central, us], NOW)
    assert [p.jurisdiction for p in plan.pressure] == ["EU"]
    pressure = plan.pressure[0]
    assert pressure.missing_requests == 320  # 2 more replicas of 80 for each pool
    assert pressure.missing_replicas == 4
    assert pressure.pools == ("eu-central", "eu-west")
    assert "EU" in pressure.message and "4 more replicas of eu-central" in pressure.message
    assert plan.decisions["us-east"] == us.decision  # the US pool takes none of it


def test_no_pressure_while_a_pool_can_still_grow() -> None:
    west = candidate("eu-west", load=PoolLoad(running=2000), hi=20, price=8.0)
    plan = plan_jurisdictions([west], NOW)
    assert plan.decisions["eu-west"].desired == 6  # one step of 4
    assert plan.pressure == ()


def test_a_pinned_pool_cannot_grow_but_its_shortfall_counts() -> None:
    pinned = candidate("eu-west", load=SURGE, lo=2, hi=2)
    plan = plan_jurisdictions([pinned], NOW)
    assert plan.decisions["eu-west"].desired == 2
    assert plan.pressure[0].missing_replicas == 2


def test_a_pool_the_residency_forbids_is_never_scaled_nor_counted() -> None:
    eu = candidate("eu-west", load=SURGE, hi=2)
    forbidden = candidate("us-east", "US", load=PoolLoad(running=2000), allowed=False)
    unknown = candidate("nowhere", None, load=PoolLoad(running=2000))
    plan = plan_jurisdictions([eu, forbidden, unknown], NOW)
    assert set(plan.blocked) == {"us-east", "nowhere"}
    assert set(plan.decisions) == {"eu-west"}
    assert "US" not in plan.order
    assert [p.jurisdiction for p in plan.pressure] == ["EU"]


def test_scale_downs_and_bounds_corrections_pass_through() -> None:
    shrinking = candidate("eu-west", current=6, load=PoolLoad(running=80))
    raised = candidate("eu-central", current=0, lo=2, load=SURGE, price=1.0)
    plan = plan_jurisdictions([shrinking, raised], NOW)
    assert plan.decisions["eu-west"] == shrinking.decision
    assert plan.decisions["eu-central"] == raised.decision
    assert raised.decision.reason == "BelowMin"


def test_a_pool_from_zero_asks_for_one_replica_even_for_a_trickle() -> None:
    cold = candidate("eu-west", current=0, lo=0, load=PoolLoad(pending=0.5))
    plan = plan_jurisdictions([cold], NOW)
    got = plan.decisions["eu-west"]
    assert (got.desired, got.reason) == (1, "ScaleFromZero")


def test_no_pool_of_a_short_jurisdiction_shrinks_it_takes_the_growth_instead() -> None:
    """A pool at its max with a queue; another, idle, was granted its growth last time: it
    does not shrink on its own idle load (it would be granted the growth again: a flap)."""
    full = candidate("eu-west", load=PoolLoad(running=800), lo=1, hi=2, current=2, price=1.0)
    idle = candidate("eu-central", load=PoolLoad(running=0), current=5, hi=7, price=8.0)
    assert idle.decision.reason == "ScaleDown"  # alone it would shrink
    plan = plan_jurisdictions([full, idle], NOW)
    got = plan.decisions["eu-central"]
    assert (got.desired, got.reason) == (7, "ScaleUp")  # it takes the growth it can
    assert got.state.last_scale_direction == "Up"
    # Every pool at its ceiling: what is missing is the demand beyond all of their capacity,
    # the idle pool's spare replicas included (800 asked; 2 x 80 + 7 x 80 run).
    assert plan.pressure[0].missing_requests == 800 - 9 * 80
    quiet = candidate("eu-west", load=PoolLoad(running=80), lo=1, hi=2, current=2, price=1.0)
    calm = plan_jurisdictions([quiet, idle], NOW)
    assert calm.decisions["eu-central"] == idle.decision and calm.pressure == ()


def test_room_a_preferred_pool_already_runs_takes_growth_before_any_new_replica() -> None:
    """The cheaper pool was granted the other's growth at the last decision (its replicas
    start, or the router has not moved the traffic yet): the same growth is not granted
    again, and it is not shrunk meanwhile."""
    granted = candidate("eu-central", load=PoolLoad(running=0), current=4, price=4.0)
    asking = candidate("eu-west", load=PoolLoad(running=320), current=1, price=8.0)
    assert asking.decision.desired == 4  # alone it would grow by 3 (240 requests)
    plan = plan_jurisdictions([asking, granted], NOW)
    assert plan.order["EU"] == ("eu-central", "eu-west")
    assert (plan.decisions["eu-central"].desired, plan.decisions["eu-central"].reason) == (
        4,
        "Spill",
    )
    assert (plan.decisions["eu-west"].desired, plan.decisions["eu-west"].reason) == (1, "Deferred")
    assert plan.pressure == ()
    # Not enough room: only the rest grows, in the same order.
    small = candidate("eu-central", load=PoolLoad(running=0), current=2, price=4.0)
    plan = plan_jurisdictions([asking, small], NOW)
    assert plan.decisions["eu-central"].desired == 3  # 160 of room + 80 more: one replica


def test_replica_price_from_region_pricing() -> None:
    assert replica_price({"H100": 6.88, "L4": 0.8}, "H100", 8) == 6.88 * 8
    assert replica_price({"L4": 0.8}, "H100", 1) is None
    assert replica_price(None, "H100", 1) is None


# --- properties -------------------------------------------------------------------------

candidate_st = st.builds(
    lambda i, jurisdiction, allowed, current, lo, extra, running, waiting, distance, price: (
        candidate(
            f"p{i}",
            jurisdiction,
            current=current,
            lo=lo,
            hi=max(1, lo + extra),
            allowed=allowed,
            load=PoolLoad(running=running, waiting=waiting),
            distance_ms=distance,
            price=price,
        )
    ),
    st.integers(0, 10_000),
    st.none() | st.sampled_from(["EU", "US", "IN"]),
    st.booleans(),
    st.integers(0, 12),
    st.integers(0, 4),
    st.integers(0, 8),
    st.floats(0, 3000, allow_nan=False),
    st.floats(0, 3000, allow_nan=False),
    st.none() | st.floats(0, 300, allow_nan=False),
    st.none() | st.floats(0, 100, allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(candidate_st, max_size=8, unique_by=lambda c: c.key))
def test_arbitration_properties(candidates: list[Candidate]) -> None:
    plan = plan_jurisdictions(candidates, NOW)
    for c in candidates:
        if not c.allowed or c.jurisdiction is None:
            # Residency: never scaled, never counted, never preferred.
            assert c.key in plan.blocked and c.key not in plan.decisions
            assert all(c.key not in keys for keys in plan.order.values())
            continue
        d = plan.decisions[c.key]
        assert c.shape.min <= d.desired <= c.shape.max
        assert d.desired <= max(c.decision.desired, c.decision.current + c.up_step)
        if d.desired != c.decision.desired:
            # Only growth moves between pools, and only inside the pool's jurisdiction.
            same = [o for o in candidates if o.allowed and o.jurisdiction == c.jurisdiction]
            assert any(
                max(o.decision.wanted, o.decision.desired) > o.decision.current for o in same
            )
    for pressure in plan.pressure:
        members = [c for c in candidates if c.allowed and c.jurisdiction == pressure.jurisdiction]
        assert members and pressure.missing_replicas >= 1
        assert all(
            plan.decisions[c.key].desired
            >= (c.shape.min if c.decision.reason in {"Pinned", "AutoscalingOff"} else c.shape.max)
            for c in members
        )
