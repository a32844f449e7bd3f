"""``decide``, the autoscaler's pure decision for one pool: a table of situations, then
properties over random pools, settings, loads and histories."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factory_operator.api.autoscaling import (
    MAX_RECOMMENDATIONS,
    POLICIES,
    EffectiveAutoscaling,
    effective_autoscaling,
)
from factory_operator.plan.autoscale import (
    Decision,
    PoolLoad,
    PoolObserved,
    PoolShape,
    ScaleState,
    decide,
    from_status,
    to_status,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BALANCED = effective_autoscaling(None, "nvidia")  # up at once, step 4; down 300 s, 120 s, 1
SHAPE = PoolShape(min=1, max=10, max_num_seqs=100)  # 80 requests per replica at 0.8


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(
    current: int,
    load: PoolLoad | None,
    *,
    shape: PoolShape = SHAPE,
    config: EffectiveAutoscaling = BALANCED,
    state: ScaleState | None = None,
    ready: int | None = None,
    now: float = 1000,
) -> Decision:
    observed = PoolObserved(current, current if ready is None else ready, load)
    return decide(shape, config, observed, state or ScaleState(), at(now))


def test_a_pool_with_min_equal_max_is_never_touched() -> None:
    memory = ScaleState(last_scale_time=at(0), last_scale_direction="Down")
    d = run(3, PoolLoad(running=5000, waiting=900), shape=PoolShape(3, 3), state=memory)
    assert (d.desired, d.reason, d.direction) == (3, "Pinned", None)
    assert d.state == memory
    assert d.wanted > 3  # what the load asks for is still known (CapacityPressure)


def test_policy_off_runs_min() -> None:
    d = run(4, PoolLoad(running=5000), config=POLICIES["off"])
    assert (d.desired, d.reason) == (1, "AutoscalingOff")


@pytest.mark.parametrize(
    ("current", "desired", "reason"), [(0, 1, "BelowMin"), (14, 10, "AboveMax")]
)
def test_a_count_outside_the_bounds_is_brought_back_at_once(
    current: int, desired: int, reason: str
) -> None:
    d = run(current, PoolLoad(), state=ScaleState(last_scale_time=at(999)))
    assert (d.desired, d.reason) == (desired, reason)
    assert d.state.last_scale_time == at(1000)


def test_without_metrics_the_count_is_held() -> None:
    d = run(5, None)
    assert (d.desired, d.reason) == (5, "NoMetrics")


# (current, load, desired, reason): balanced policy, 80 requests per replica, no history.
TABLE = [
    (2, PoolLoad(running=150), 2, "Steady"),  # 150/160 within tolerance
    (2, PoolLoad(running=170, waiting=4), 2, "Steady"),  # 174/160: within 10 %
    (2, PoolLoad(running=160, waiting=80), 3, "ScaleUp"),  # 240 requests: 3 replicas
    (2, PoolLoad(running=160, waiting=100), 4, "ScaleUp"),  # 260 requests: 4
    (2, PoolLoad(running=60, waiting=100), 5, "ScaleUp"),  # KV-bound at 30 each: 160/34
    (2, PoolLoad(running=100, kv_cache_usage=1.0), 3, "ScaleUp"),  # KV 1.25 x target
    (2, PoolLoad(running=100, waiting=6), 2, "Steady"),  # 3 waiting per replica: under 4
    (9, PoolLoad(running=2000, waiting=500), 10, "ScaleUp"),  # capped at max
    (10, PoolLoad(running=2000, waiting=500), 10, "Steady"),  # at max
    (4, PoolLoad(running=80), 3, "ScaleDown"),  # one step down, no history to hold it
    (4, PoolLoad(running=80, kv_cache_usage=0.8), 4, "Steady"),  # KV at target holds it
]


@pytest.mark.parametrize(("current", "load", "desired", "reason"), TABLE)
def test_table(current: int, load: PoolLoad, desired: int, reason: str) -> None:
    d = run(current, load)
    assert (d.desired, d.reason) == (desired, reason), d.message
    assert 1 <= d.desired <= 10


def test_a_queue_keeps_a_pool_from_shrinking_to_where_it_would_be_over_target() -> None:
    wide = replace(BALANCED, down_max_step_replicas=4)
    d = run(4, PoolLoad(running=10, waiting=8), config=wide)  # demand alone says 1
    assert (d.desired, d.reason) == (2, "ScaleDown")  # 8 waiting on 1 would be over 4.4


def test_the_message_names_the_signal_that_decided() -> None:
    d = run(2, PoolLoad(running=100, kv_cache_usage=1.0))
    assert "KV-cache usage at 1.25 x target" in d.message


def test_growth_is_projected_over_the_startup_time() -> None:
    before = ScaleState(demand=100, demand_time=at(985))
    load = PoolLoad(running=160)
    flat = run(2, load)
    rising = run(2, load, state=before)  # +4 req/s for 240 s, capped at double: 320
    assert (flat.desired, flat.reason) == (2, "Steady")
    assert (rising.desired, rising.reason) == (4, "ScaleUp")
    assert "320 projected over 240 s" in rising.message
    measured = run(2, replace(load, growth_per_second=0.25))  # 60 more in 240 s: 220 -> 3
    assert measured.desired == 3


def test_falling_demand_projects_nothing() -> None:
    d = run(2, PoolLoad(running=150), state=ScaleState(demand=400, demand_time=at(985)))
    assert (d.desired, d.reason) == (2, "Steady")


def test_ttft_over_its_slo_grows_a_pool_but_under_it_never_shrinks_one() -> None:
    slo = replace(BALANCED, ttft_p95_ms=500)
    slow = run(2, PoolLoad(running=100, ttft_p95_seconds=2.0), config=slo)
    assert (slow.desired, slow.reason) == (6, "ScaleUp")  # 4 x target on 2 ready, step 4
    fast = run(2, PoolLoad(running=150, ttft_p95_seconds=0.05), config=slo)
    assert (fast.desired, fast.reason) == (2, "Steady")


def test_ratio_signals_count_ready_replicas_only() -> None:
    # 4 asked for, 2 ready at KV 1.6 x target: ceil(2 x 1.6) = 4 -> no more until they start.
    d = run(
        4,
        PoolLoad(running=100, kv_cache_usage=1.0),
        ready=2,
        config=replace(BALANCED, kv_cache_usage=0.625),
    )
    assert (d.desired, d.reason) == (4, "Steady")


def test_scale_down_waits_for_the_highest_recommendation_of_its_window() -> None:
    high = run(5, PoolLoad(running=400), now=0)
    assert high.reason == "Steady"
    low = PoolLoad(running=40)
    held = run(5, low, state=high.state, now=200)
    assert (held.desired, held.reason) == (5, "Stabilizing")
    later = run(5, low, state=held.state, now=301)
    assert (later.desired, later.reason) == (4, "ScaleDown")
    assert later.state.last_scale_direction == "Down"


def test_no_scale_down_within_the_cooldown_of_any_change() -> None:
    down = ScaleState(last_scale_time=at(900), last_scale_direction="Down")
    d = run(5, PoolLoad(running=40), state=down)
    assert (d.desired, d.reason) == (5, "Cooldown")
    assert run(5, PoolLoad(running=40), state=down, now=1021).reason == "ScaleDown"


def test_after_a_scale_up_nothing_is_removed_before_its_replicas_could_start() -> None:
    up = ScaleState(last_scale_time=at(800), last_scale_direction="Up")
    neuron = effective_autoscaling(None, "neuron")  # 900 s expected startup
    d = run(5, PoolLoad(running=40), state=up, config=neuron)
    assert (d.desired, d.reason) == (5, "Cooldown")
    assert "within 900 s" in d.message


def test_scale_up_is_not_held_by_the_cooldown() -> None:
    down = ScaleState(last_scale_time=at(999), last_scale_direction="Down")
    d = run(2, PoolLoad(running=400), state=down)
    assert (d.desired, d.reason) == (5, "ScaleUp")


def test_a_scale_up_window_takes_the_lowest_recommendation() -> None:
    calm = replace(BALANCED, up_stabilization_seconds=60)
    before = run(2, PoolLoad(running=150), config=calm, now=0)
    assert before.reason == "Steady"
    spike = run(2, PoolLoad(running=400), config=calm, state=before.state, now=30)
    assert (spike.desired, spike.reason) == (2, "Stabilizing")  # 2 was recommended at 0 s
    lasting = run(2, PoolLoad(running=400), config=calm, state=spike.state, now=61)
    assert (lasting.desired, lasting.reason) == (5, "ScaleUp")


def test_idle_pool_with_min_zero_goes_to_zero_after_its_idle_window_only() -> None:
    shape = PoolShape(min=0, max=4, max_num_seqs=100)
    idle = ScaleState(idle_since=at(101))
    d = run(1, PoolLoad(), shape=shape, state=idle)
    assert (d.desired, d.reason) == (1, "Steady")  # idle 899 s of 900
    d = run(1, PoolLoad(), shape=shape, state=d.state, now=1001)
    assert (d.desired, d.reason) == (0, "Idle")
    stays = run(0, PoolLoad(), shape=shape, state=d.state, now=1100)
    assert (stays.desired, stays.reason) == (0, "ScaledToZero")


def test_any_request_resets_the_idle_window() -> None:
    shape = PoolShape(min=0, max=4, max_num_seqs=100)
    d = run(1, PoolLoad(running=1), shape=shape, state=ScaleState(idle_since=at(0)))
    assert d.state.idle_since is None and d.desired == 1


def test_from_zero_at_once_on_pending_demand_whatever_the_cooldown() -> None:
    shape = PoolShape(min=0, max=4, max_num_seqs=100)
    just_down = ScaleState(last_scale_time=at(999), last_scale_direction="Down")
    one = run(0, PoolLoad(pending=3), shape=shape, state=just_down)
    assert (one.desired, one.reason) == (1, "ScaleFromZero")
    many = run(0, PoolLoad(pending=300), shape=shape)  # 300 / 80 -> 4
    assert many.desired == 4


def test_the_memory_survives_the_status_round_trip() -> None:
    d = run(2, PoolLoad(running=400), state=ScaleState(idle_since=at(5)))
    d = run(d.desired, PoolLoad(running=0), state=d.state, now=1010)
    status = to_status(d)
    assert status.current_replicas == d.current and status.reason == d.reason
    assert from_status(status) == d.state
    assert from_status(None) == ScaleState()


def test_the_memory_stays_bounded_and_keeps_the_window_maximum() -> None:
    memory = ScaleState()
    big = PoolShape(min=1, max=1000, max_num_seqs=10)  # 8 requests per replica
    for step in range(200):
        load = PoolLoad(running=8 * (1 + (step * 7) % 50), growth_per_second=0.0)
        memory = run(5, load, shape=big, state=memory, now=step).state
    assert len(memory.recommendations) <= MAX_RECOMMENDATIONS
    assert max(r for _, r in memory.recommendations) == 50


# --- properties -------------------------------------------------------------------------

config_st = st.builds(
    lambda policy, up_window, down_extra, cooldown, up_step, down_step, idle, startup, slo: replace(
        POLICIES[policy],
        up_stabilization_seconds=up_window,
        down_stabilization_seconds=up_window + down_extra,
        down_cooldown_seconds=cooldown,
        up_max_step_replicas=up_step,
        down_max_step_replicas=down_step,
        idle_seconds=idle,
        expected_startup_seconds=startup,
        ttft_p95_ms=slo,
    ),
    st.sampled_from(["balanced", "aggressive", "conservative", "off"]),
    st.integers(0, 120),
    st.integers(0, 900),
    st.integers(0, 600),
    st.integers(1, 8),
    st.integers(1, 4),
    st.integers(0, 1800),
    st.integers(0, 1200),
    st.none() | st.integers(50, 5000),
)
shape_st = st.builds(
    lambda lo, extra, seqs: PoolShape(min=lo, max=max(1, lo + extra), max_num_seqs=seqs),
    st.integers(0, 8),
    st.integers(0, 12),
    st.integers(1, 512),
)
counts = st.floats(0, 5000, allow_nan=False)
load_st = st.none() | st.builds(
    PoolLoad,
    running=counts,
    waiting=counts,
    kv_cache_usage=st.none() | st.floats(0, 1),
    ttft_p95_seconds=st.none() | st.floats(0, 60),
    pending=st.sampled_from([0.0, 0.0, 1.0, 40.0]),
    growth_per_second=st.none() | st.floats(-50, 50),
)
state_st = st.builds(
    lambda last, direction, idle, demand, recs: ScaleState(
        last_scale_time=None if last is None else at(1000 - last),
        last_scale_direction=direction if last is not None else None,
        idle_since=None if idle is None else at(1000 - idle),
        demand=demand,
        demand_time=None if demand is None else at(990),
        recommendations=tuple((at(1000 - age), r) for age, r in sorted(recs, reverse=True)),
    ),
    st.none() | st.integers(0, 2000),
    st.sampled_from(["Up", "Down"]),
    st.none() | st.integers(0, 4000),
    st.none() | counts,
    st.lists(
        st.tuples(st.integers(1, 2000), st.integers(0, 30)), max_size=10, unique_by=lambda t: t[0]
    ),
)


@settings(max_examples=400, deadline=None)
@given(shape_st, config_st, load_st, state_st, st.integers(0, 40), st.integers(0, 40))
def test_never_outside_min_max(
    shape: PoolShape,
    config: EffectiveAutoscaling,
    load: PoolLoad | None,
    state: ScaleState,
    current: int,
    ready: int,
) -> None:
    d = decide(shape, config, PoolObserved(current, min(ready, current), load), state, at(1000))
    assert shape.min <= d.desired <= shape.max, d
    assert len(d.state.recommendations) <= MAX_RECOMMENDATIONS


@settings(max_examples=200, deadline=None)
@given(config_st, load_st, state_st, st.integers(0, 10), st.integers(0, 40))
def test_min_equal_max_is_never_touched(
    config: EffectiveAutoscaling, load: PoolLoad | None, state: ScaleState, n: int, current: int
) -> None:
    d = decide(PoolShape(n, n), config, PoolObserved(current, current, load), state, at(1000))
    assert d.desired == n and d.state == state


@settings(max_examples=300, deadline=None)
@given(
    shape_st,
    config_st,
    st.builds(
        PoolLoad,
        running=counts,
        waiting=counts,
        kv_cache_usage=st.none() | st.floats(0, 1),
        ttft_p95_seconds=st.none() | st.floats(0, 60),
        pending=st.sampled_from([0.0, 5.0]),
    ),
    st.integers(0, 20),
    st.integers(1, 60),
    st.integers(0, 2),
)
def test_a_constant_load_changes_direction_at_most_once(
    shape: PoolShape,
    config: EffectiveAutoscaling,
    load: PoolLoad,
    start: int,
    interval: int,
    lag: int,
) -> None:
    """N decisions under the same load: replicas become ready `lag` decisions after they are
    asked for; the count moves up or down, and turns around at most once."""
    memory, current, asked = ScaleState(), start, [start] * (lag + 1)
    moves: list[str] = []
    for step in range(120):
        ready = min(current, asked[-(lag + 1)])
        d = decide(shape, config, PoolObserved(current, ready, load), memory, at(step * interval))
        if d.direction:
            moves.append(d.direction)
        memory, current = d.state, d.desired
        asked.append(current)
    turns = sum(1 for a, b in pairwise(moves) if a != b)
    assert turns <= 1, moves


@settings(max_examples=200, deadline=None)
@given(shape_st, config_st, st.integers(1, 60), st.floats(1, 5000))
def test_a_constant_total_demand_spread_over_replicas_does_not_flap(
    shape: PoolShape, config: EffectiveAutoscaling, interval: int, demand: float
) -> None:
    """The same total demand, shared by the ready replicas (per-replica signals follow the
    count, as on a real pool): at most one turn."""
    memory, current = ScaleState(), shape.min
    moves: list[str] = []
    per_replica_capacity = shape.max_num_seqs
    for step in range(120):
        ready = current
        share = demand / max(ready, 1)
        running = min(demand, ready * per_replica_capacity)
        load = PoolLoad(
            running=running,
            waiting=demand - running,
            kv_cache_usage=min(1.0, share / per_replica_capacity) if ready else None,
        )
        d = decide(shape, config, PoolObserved(current, ready, load), memory, at(step * interval))
        if d.direction:
            moves.append(d.direction)
        memory, current = d.state, d.desired
    turns = sum(1 for a, b in pairwise(moves) if a != b)
    assert turns <= 1, moves
