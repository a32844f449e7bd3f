"""Properties of the autoscaler as the timer runs it (``autoscale_pools`` then
``plan_factory``), over random factories, residencies, loads and histories: every count stays
within ``[min, max]``, no pool of a region outside the residency is ever scaled or deployed,
and a constant load, decided again and again with the memory going through the factory's
status as in the cluster, turns a pool around at most once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from conftest import NODES, REGIONS, factory
from hypothesis import given, settings
from hypothesis import strategies as st

from factory_operator.api import InferenceFactory
from factory_operator.plan import DeploymentInfo, Observed, OperatorSettings, plan_factory
from factory_operator.plan.autoscale import PoolLoad
from factory_operator.plan.scaling import AutoscalePlan, autoscale_pools

T0 = datetime(2026, 1, 1, tzinfo=UTC)
JURISDICTIONS = sorted({r.spec.jurisdiction for r in REGIONS.values()})

pool_st = st.builds(
    lambda region, low, extra: {"region": region, "min": low, "max": max(1, low + extra)},
    st.sampled_from(sorted(REGIONS)),
    st.integers(0, 4),
    st.integers(0, 6),
)
autoscaling_st = st.fixed_dictionaries(
    {},
    optional={
        "policy": st.sampled_from(["balanced", "aggressive", "conservative", "off"]),
        "expectedStartupSeconds": st.integers(0, 600),
        "scaleDown": st.fixed_dictionaries(
            {"stabilizationSeconds": st.integers(0, 600), "cooldownSeconds": st.integers(0, 300)}
        ),
    },
)
load_st = st.builds(
    PoolLoad,
    running=st.floats(0, 400, allow_nan=False),
    waiting=st.floats(0, 400, allow_nan=False),
    kv_cache_usage=st.none() | st.floats(0, 1),
)


def _factory(
    pools: list[dict[str, Any]], residency: list[str] | None, autoscaling: dict[str, Any]
) -> InferenceFactory:
    spec_pools = [
        {"name": f"p{i}", "region": p["region"],
         "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
         "replicas": {"min": p["min"], "max": p["max"]}}
        for i, p in enumerate(pools)
    ]  # fmt: skip
    body = factory(spec_pools, residency=residency, engine={"args": {"maxNumSeqs": 16}}).to_wire()
    body["spec"]["autoscaling"] = autoscaling
    return InferenceFactory.model_validate(body)


def _deployments(f: InferenceFactory, counts: dict[str, int]) -> dict[str, DeploymentInfo]:
    return {
        name: DeploymentInfo(f"llama-{name}", name, count, count) for name, count in counts.items()
    }


def _step(
    f: InferenceFactory, counts: dict[str, int], loads: dict[str, PoolLoad], now: datetime
) -> tuple[InferenceFactory, AutoscalePlan, dict[str, int]]:
    """One decision of the timer: plan, 'apply' (the Deployments take the counts), and the
    status written back into the factory, where the next decision reads its memory."""
    deployments = _deployments(f, counts)
    scaling = autoscale_pools(f, REGIONS, deployments, loads, now)
    observed = Observed(now=now.strftime("%Y-%m-%dT%H:%M:%SZ"), nodes=NODES,
                        deployments=deployments)  # fmt: skip
    plan = plan_factory(f, REGIONS, observed, OperatorSettings(), scaling)
    applied = {
        c["metadata"]["labels"]["inference.factory.dev/pool"]: int(c["spec"]["replicas"])
        for c in plan.apply
        if c["kind"] == "Deployment"
    }
    body = f.to_wire()
    body["status"] = plan.status.to_wire()
    return InferenceFactory.model_validate(body), scaling, applied


@settings(max_examples=150, deadline=None)
@given(
    st.lists(pool_st, min_size=1, max_size=5),
    st.none() | st.lists(st.sampled_from(JURISDICTIONS), min_size=1, unique=True),
    autoscaling_st,
    st.lists(load_st, min_size=5, max_size=5),
    st.lists(st.integers(0, 12), min_size=5, max_size=5),
)
def test_within_bounds_and_never_in_a_region_the_residency_forbids(
    pools: list[dict[str, Any]],
    residency: list[str] | None,
    autoscaling: dict[str, Any],
    loads: list[PoolLoad],
    currents: list[int],
) -> None:
    f = _factory(pools, residency, autoscaling)
    names = [p.name for p in f.spec.pools]
    counts = {name: currents[i] for i, name in enumerate(names)}
    _, scaling, applied = _step(f, counts, {n: loads[i] for i, n in enumerate(names)}, T0)
    for spec_pool in f.spec.pools:
        jurisdiction = REGIONS[spec_pool.region].spec.jurisdiction
        if residency is not None and jurisdiction not in residency:
            assert spec_pool.name not in scaling.pools and spec_pool.name not in applied
            continue
        desired = scaling.pools[spec_pool.name].desired
        assert spec_pool.replicas.min <= desired <= spec_pool.replicas.max
        assert applied[spec_pool.name] == desired
    for pressure in scaling.pressure:
        assert residency is None or pressure.jurisdiction in residency


@settings(max_examples=100, deadline=None)
@given(
    st.lists(pool_st, min_size=1, max_size=3),
    autoscaling_st,
    st.lists(load_st, min_size=3, max_size=3),
    st.integers(1, 30),
)
def test_a_constant_load_through_the_status_memory_turns_a_pool_at_most_once(
    pools: list[dict[str, Any]], autoscaling: dict[str, Any], loads: list[PoolLoad], interval: int
) -> None:
    f = _factory(pools, None, autoscaling)
    names = [p.name for p in f.spec.pools]
    load = {n: loads[i] for i, n in enumerate(names)}
    counts = {p.name: p.replicas.min for p in f.spec.pools}
    moves: dict[str, list[str]] = {n: [] for n in names}
    for step in range(60):
        f, scaling, counts = _step(f, counts, load, T0 + timedelta(seconds=step * interval))
        for name, scale in scaling.pools.items():
            if scale.direction is not None:
                moves[name].append(scale.direction)
    for name, seen in moves.items():
        assert sum(1 for a, b in pairwise(seen) if a != b) <= 1, (name, seen)
