"""``plan_factory`` with the autoscaler's outcome: the count goes into the Deployment through
the usual apply, the decision into the pool's status, its events and CapacityPressure onto the
factory; without it nothing changes; mode external leaves the Deployment at min."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from conftest import NODES, NOW, REGIONS, factory, pool

from factory_operator.api import InferenceFactory
from factory_operator.plan import Observed, OperatorSettings, Plan, plan_factory
from factory_operator.plan.autoscale import PoolLoad, PoolObserved
from factory_operator.plan.scaling import plan_autoscaling

AT = datetime(2026, 1, 1, tzinfo=UTC)
SURGE = PoolObserved(2, 2, PoolLoad(running=160, waiting=160))  # 4 wanted at 80 each


def _factory(max_: int = 8, **autoscaling: Any) -> InferenceFactory:
    pools = [
        {**pool("a", "eu-west-1"), "replicas": {"min": 2, "max": max_}},
        pool("us", "us-east-1"),
    ]
    body = factory(pools, residency=["EU"], engine={"args": {"maxNumSeqs": 100}}).to_wire()
    if autoscaling:
        body["spec"]["autoscaling"] = autoscaling
    return InferenceFactory.model_validate(body)


def _plan(f: InferenceFactory, settings: OperatorSettings, scaled: bool = True) -> Plan:
    scale = plan_autoscaling(f, REGIONS, {"a": SURGE, "us": SURGE}, AT) if scaled else None
    return plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), settings, scale)


def _deployment(plan: Plan, name: str) -> dict[str, Any]:
    return next(
        c for c in plan.apply if c["kind"] == "Deployment" and c["metadata"]["name"] == name
    )


def test_the_autoscalers_count_is_applied_and_shown(settings: OperatorSettings) -> None:
    plan = _plan(_factory(), settings)
    assert _deployment(plan, "llama-a")["spec"]["replicas"] == 4
    status = {p.name: p for p in plan.status.pools}
    assert status["a"].desired_replicas == 4
    assert status["a"].autoscaling is not None
    assert (status["a"].autoscaling.current_replicas, status["a"].autoscaling.reason) == (
        2,
        "ScaleUp",
    )
    assert status["us"].autoscaling is None and status["us"].state == "Blocked"
    assert [e.reason for e in plan.events] == ["ScaledUp"]
    pressure = next(c for c in plan.status.conditions if c.type == "CapacityPressure")
    assert (pressure.status, pressure.reason) == ("False", "WithinCapacity")


def test_capacity_pressure_reaches_the_factorys_conditions(settings: OperatorSettings) -> None:
    plan = _plan(_factory(max_=2), settings)
    pressure = next(c for c in plan.status.conditions if c.type == "CapacityPressure")
    assert (pressure.status, pressure.reason) == ("True", "AllPoolsAtMax")
    assert "EU" in pressure.message
    assert "CapacityPressure" in [e.reason for e in plan.events]


def test_mode_external_keeps_the_deployment_at_min(settings: OperatorSettings) -> None:
    plan = _plan(_factory(mode="external"), settings)
    assert _deployment(plan, "llama-a")["spec"]["replicas"] == 2
    a = next(p for p in plan.status.pools if p.name == "a")
    assert a.desired_replicas == 2
    assert a.autoscaling is not None and a.autoscaling.desired_replicas == 4


def test_without_the_autoscaler_nothing_changes(settings: OperatorSettings) -> None:
    plan = _plan(_factory(), settings, scaled=False)
    assert _deployment(plan, "llama-a")["spec"]["replicas"] == 2
    assert all(p.autoscaling is None for p in plan.status.pools)
    assert "CapacityPressure" not in {c.type for c in plan.status.conditions}
