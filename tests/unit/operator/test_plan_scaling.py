"""``plan_autoscaling``: one factory's pools from spec, regions, load and the status memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import REGIONS, factory, pool, region

from factory_operator.api import FleetRegion, InferenceFactory
from factory_operator.plan.autoscale import PoolLoad, PoolObserved
from factory_operator.plan.jurisdiction import pressure_condition
from factory_operator.plan.scaling import batch_capacity, plan_autoscaling

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
SEQS = {"engine": {"args": {"maxNumSeqs": 100}}}  # 80 requests per replica (balanced)


def priced(name: str, jurisdiction: str, price: float) -> FleetRegion:
    base = region(name, jurisdiction)
    spec = base.spec.model_copy(update={"pricing": {"H100": price}})
    return base.model_copy(update={"spec": spec})


def with_autoscaling(f: InferenceFactory, settings: dict[str, Any]) -> InferenceFactory:
    body = f.to_wire()
    body["spec"]["autoscaling"] = settings
    return InferenceFactory.model_validate(body)


def eu_factory(**autoscaling: Any) -> InferenceFactory:
    pools = [
        {**pool("west", "eu-west-1"), "replicas": {"min": 1, "max": 8}, **SEQS},
        {**pool("central", "eu-central-1"), "replicas": {"min": 1, "max": 8}, **SEQS},
        {**pool("us", "us-east-1"), "replicas": {"min": 1, "max": 8}, **SEQS},
    ]
    f = factory(pools, residency=["EU"])
    return with_autoscaling(f, autoscaling) if autoscaling else f


REGIONS_PRICED = {
    **REGIONS,
    "eu-west-1": priced("eu-west-1", "EU", 8.0),
    "eu-central-1": priced("eu-central-1", "EU", 4.0),
}
SURGE = PoolObserved(2, 2, PoolLoad(running=160, waiting=160))
CALM = PoolObserved(2, 2, PoolLoad(running=150))


def test_a_surge_grows_the_cheaper_eu_pool_and_never_the_forbidden_one() -> None:
    seen = {"west": SURGE, "central": SURGE, "us": SURGE}
    plan = plan_autoscaling(eu_factory(), REGIONS_PRICED, seen, NOW)
    assert set(plan.pools) == {"west", "central"}  # us-east-1 is outside residency
    assert plan.pools["central"].desired == 6 and plan.pools["west"].desired == 2
    assert plan.pools["west"].status.reason == "Deferred"
    assert plan.pools["central"].status.last_scale_direction == "Up"
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "ScaledUp")]
    assert "pool central: 2 -> 6 replicas" in plan.events[0].message
    assert not plan.external and not plan.pressure


def test_a_pool_not_observed_here_gets_no_decision() -> None:
    plan = plan_autoscaling(eu_factory(), REGIONS_PRICED, {"west": CALM}, NOW)
    assert set(plan.pools) == {"west"} and plan.pools["west"].desired == 2
    assert plan.events == []


def test_a_new_pool_starts_at_min() -> None:
    plan = plan_autoscaling(eu_factory(), REGIONS_PRICED, {"west": PoolObserved(0, 0)}, NOW)
    assert (plan.pools["west"].desired, plan.pools["west"].status.reason) == (1, "BelowMin")


def test_the_memory_in_status_carries_the_stabilization_window() -> None:
    f = eu_factory()
    busy = {"west": PoolObserved(5, 5, PoolLoad(running=400))}
    first = plan_autoscaling(f, REGIONS_PRICED, busy, NOW)
    status = {
        "pools": [
            {
                "name": "west",
                "region": "eu-west-1",
                "state": "Running",
                "desiredReplicas": 5,
                "readyReplicas": 5,
                "autoscaling": first.pools["west"].status.to_wire(),
            }
        ]
    }
    body = f.to_wire()
    body["status"] = status
    remembered = InferenceFactory.model_validate(body)
    quiet = {"west": PoolObserved(5, 5, PoolLoad(running=40))}
    soon = plan_autoscaling(remembered, REGIONS_PRICED, quiet, NOW + timedelta(seconds=200))
    assert (soon.pools["west"].desired, soon.pools["west"].status.reason) == (5, "Stabilizing")
    fresh = plan_autoscaling(f, REGIONS_PRICED, quiet, NOW + timedelta(seconds=200))
    assert fresh.pools["west"].desired == 4  # without the memory it would shrink at once


def test_capacity_pressure_is_an_event_and_a_condition() -> None:
    pools = [{**pool("west", "eu-west-1"), "replicas": {"min": 1, "max": 2}, **SEQS}]
    f = factory(pools, residency=["EU"])
    plan = plan_autoscaling(f, REGIONS_PRICED, {"west": SURGE}, NOW)
    assert [p.jurisdiction for p in plan.pressure] == ["EU"]
    assert ("Warning", "CapacityPressure") in [(e.type, e.reason) for e in plan.events]
    cond = pressure_condition(plan.pressure, generation=3, now="2026-01-01T12:00:00Z", previous=[])
    assert (cond.type, cond.status, cond.reason) == ("CapacityPressure", "True", "AllPoolsAtMax")
    assert "2 more replicas of west" in cond.message
    calm = pressure_condition((), generation=3, now="2026-01-01T12:05:00Z", previous=[cond])
    assert (calm.status, calm.last_transition_time) == ("False", "2026-01-01T12:05:00Z")


def test_mode_external_is_reported_for_the_caller_to_publish() -> None:
    plan = plan_autoscaling(eu_factory(mode="external"), REGIONS_PRICED, {"west": SURGE}, NOW)
    assert plan.external and plan.pools["west"].desired == 4


def test_batch_capacity_pool_over_factory_then_vllm_default() -> None:
    pools = [
        {**pool("a", "eu-west-1"), "engine": {"args": {"maxNumSeqs": 64}}},
        pool("b", "eu-west-1"),
    ]
    f = factory(pools, engine={"args": {"maxNumSeqs": 32}})
    assert [batch_capacity(f, p) for p in f.spec.pools] == [64, 32]
    bare = factory([pool("c", "eu-west-1")])
    assert batch_capacity(bare, bare.spec.pools[0]) == 256
