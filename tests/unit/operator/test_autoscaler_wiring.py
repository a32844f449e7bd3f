"""How the autoscaler is wired into every reconcile (pure parts): which pools it sees and how,
the counts kept between its decisions, no Prometheus URL, mode external's hand-over of
``spec.replicas``, its metrics and settings."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import NODES, NOW, REGIONS, factory, pool

from factory_operator.api import InferenceFactory
from factory_operator.handlers.reconcile import record_autoscaling
from factory_operator.k8s import OperatorMetrics
from factory_operator.k8s.apply import HANDOVER_MANAGER, owns_replicas, replicas_handover
from factory_operator.main import parse_args
from factory_operator.plan import DeploymentInfo, Observed, OperatorSettings, plan_factory
from factory_operator.plan.autoscale import PoolLoad
from factory_operator.plan.scaling import (
    autoscale_pools,
    autoscaled,
    held_autoscaling,
    hold_at_min,
    observe_pools,
)

AT = datetime(2026, 1, 1, tzinfo=UTC)
FAST = {"expectedStartupSeconds": 0}


def _factory(
    autoscaling: dict[str, Any] | None = FAST,
    status: dict[str, Any] | None = None,
    low: int = 1,
    high: int = 4,
) -> InferenceFactory:
    pools = [
        {**pool("a", "eu-west-1"), "replicas": {"min": low, "max": high}},
        {**pool("pinned", "eu-central-1"), "replicas": {"min": 2, "max": 2}},
        {**pool("us", "us-east-1"), "replicas": {"min": 1, "max": 4}},
    ]
    body = factory(pools, residency=["EU"], engine={"args": {"maxNumSeqs": 10}}).to_wire()
    if autoscaling is not None:
        body["spec"]["autoscaling"] = autoscaling
    if status is not None:
        body["status"] = status
    return InferenceFactory.model_validate(body)


def _deployment(pool_name: str, replicas: int, ready: int | None = None) -> DeploymentInfo:
    return DeploymentInfo(
        f"llama-{pool_name}", pool_name, replicas, replicas if ready is None else ready
    )


def _remembered(f: InferenceFactory, plan_pools: dict[str, Any]) -> InferenceFactory:
    """The factory with a plan's pool statuses written back, as the operator does."""
    body = f.to_wire()
    body["status"] = {
        "pools": [
            {"name": name, "region": "eu-west-1", "state": "Running",
             "desiredReplicas": scale.desired, "readyReplicas": scale.desired,
             "autoscaling": scale.status.to_wire()}
            for name, scale in plan_pools.items()
        ]
    }  # fmt: skip
    return InferenceFactory.model_validate(body)


def test_only_a_factory_with_spec_autoscaling_is_autoscaled() -> None:
    assert autoscaled(_factory({})) and autoscaled(_factory())
    assert not autoscaled(_factory(None))


def test_a_pool_without_a_deployment_counts_as_at_min_and_a_missing_series_as_idle() -> None:
    f = _factory()
    seen = observe_pools(f, {}, {}, None)
    assert (seen["a"].current, seen["a"].ready, seen["a"].load) == (1, 0, PoolLoad())
    # Ready replicas but no series: a scrape problem, not zero demand: no metrics.
    seen = observe_pools(f, {"a": _deployment("a", 3)}, {}, None)
    assert (seen["a"].current, seen["a"].load) == (3, None)
    # Prometheus down: no metrics for any pool.
    assert observe_pools(f, {}, None, None)["a"].load is None
    # --region: only that region's pools.
    assert set(observe_pools(f, {}, {}, "eu-central-1")) == {"pinned"}


def test_a_surge_through_the_timers_path_scales_and_says_why() -> None:
    f = _factory()
    loads = {"a": PoolLoad(running=30), "us": PoolLoad(running=900)}
    plan = autoscale_pools(f, REGIONS, {"a": _deployment("a", 1)}, loads, AT)
    assert plan.pools["a"].desired == 4 and plan.pools["a"].direction == "Up"
    assert "us" not in plan.pools  # outside the residency: never decided
    assert plan.pools["pinned"].status.reason == "Pinned"
    assert [e.message for e in plan.events] == [
        "pool a: 1 -> 4 replicas (ScaleUp): 30 requests at 8 per replica: needs 4"
    ]


def test_other_reconciles_keep_the_last_decisions_counts() -> None:
    f = _factory()
    decided = autoscale_pools(f, REGIONS, {"a": _deployment("a", 1)}, {"a": PoolLoad(running=30)},
                              AT)  # fmt: skip
    remembered = _remembered(f, dict(decided.pools))
    held = held_autoscaling(remembered, REGIONS, {"a": _deployment("a", 4)})
    assert held.held and held.events == () and held.pools["a"].desired == 4
    assert held.pools["a"].direction is None
    assert held.pools["a"].status.reason == "ScaleUp"  # the decision's, not a new one
    assert held.pools["pinned"].desired == 2
    # The spec's bounds moved under the decision: kept within them.
    narrowed = _remembered(_factory(high=3), dict(decided.pools))
    assert held_autoscaling(narrowed, REGIONS, {"a": _deployment("a", 4)}).pools["a"].desired == 3


def test_turning_autoscaling_on_moves_no_count_by_itself() -> None:
    held = held_autoscaling(_factory(), REGIONS, {"a": _deployment("a", 3)})
    assert held.pools["a"].desired == 3 and held.pools["a"].status.reason == "Pending"
    assert held_autoscaling(_factory(), REGIONS, {}).pools["a"].desired == 1  # new: at min


def test_without_a_prometheus_url_pools_are_held_at_min_and_say_so() -> None:
    plan = hold_at_min(_factory(), REGIONS, {"a": _deployment("a", 3)})
    assert plan.pools["a"].desired == 1 and plan.pools["a"].status.reason == "NoLoadSource"
    assert "--prometheus-url" in plan.pools["a"].status.message
    assert [e.reason for e in plan.events] == ["ScaledDown"]
    assert "us" not in plan.pools and not plan.pressure


def test_capacity_pressure_is_one_event_when_it_begins_not_one_per_decision() -> None:
    f = _factory(high=2)
    loads = {"a": PoolLoad(running=40), "pinned": PoolLoad(running=16)}
    deployments = {"a": _deployment("a", 2), "pinned": _deployment("pinned", 2)}
    first = autoscale_pools(f, REGIONS, deployments, loads, AT)
    assert [e.reason for e in first.events] == ["CapacityPressure"]
    assert [(p.missing_requests, p.missing_replicas) for p in first.pressure] == [(24.0, 3)]
    planned = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), OperatorSettings(), first)
    body = f.to_wire()
    body["status"] = planned.status.to_wire()
    again = autoscale_pools(InferenceFactory.model_validate(body), REGIONS, deployments, loads,
                            AT + timedelta(seconds=15))  # fmt: skip
    assert again.pressure and list(again.events) == []


def test_mode_external_follows_its_own_count_and_shows_the_deployments() -> None:
    f = _factory({**FAST, "mode": "external"})
    first = autoscale_pools(f, REGIONS, {"a": _deployment("a", 1)}, {"a": PoolLoad(running=30)},
                            AT)  # fmt: skip
    assert first.external and first.pools["a"].desired == 4
    assert "published for KEDA/HPA" in first.events[0].message
    # KEDA has not caught up (still 1): no new decision, no new event.
    later = autoscale_pools(_remembered(f, dict(first.pools)), REGIONS,
                            {"a": _deployment("a", 1)}, {"a": PoolLoad(running=30)},
                            AT + timedelta(seconds=15))  # fmt: skip
    assert later.pools["a"].direction is None and list(later.events) == []
    assert (later.pools["a"].status.desired_replicas, later.pools["a"].status.current_replicas) == (
        4,
        1,
    )


def _deployment_manifest(plan: Any, name: str) -> dict[str, Any]:
    return next(
        c for c in plan.apply if c["kind"] == "Deployment" and c["metadata"]["name"] == name
    )


def test_mode_external_drops_replicas_from_an_existing_deployment() -> None:
    f = _factory({**FAST, "mode": "external"})
    world = Observed(now=NOW, nodes=NODES, deployments={"a": _deployment("a", 3)})
    held = held_autoscaling(f, REGIONS, world.deployments)
    plan = plan_factory(f, REGIONS, world, OperatorSettings(), held)
    assert "replicas" not in _deployment_manifest(plan, "llama-a")["spec"]
    assert next(p for p in plan.status.pools if p.name == "a").desired_replicas == 3
    # A new one is created at min, then handed over.
    new = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), OperatorSettings(), held)
    assert _deployment_manifest(new, "llama-a")["spec"]["replicas"] == 1


def test_the_rollout_strategy_follows_the_autoscalers_count() -> None:
    f = _factory(high=4)
    world = Observed(now=NOW, nodes=NODES)
    at_max = autoscale_pools(f, REGIONS, {"a": _deployment("a", 1)}, {"a": PoolLoad(running=40)},
                             AT)  # fmt: skip
    spec = _deployment_manifest(plan_factory(f, REGIONS, world, OperatorSettings(), at_max),
                                "llama-a")["spec"]  # fmt: skip
    assert spec["replicas"] == 4
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_a_held_reconcile_keeps_the_capacity_pressure_condition() -> None:
    f = _factory(high=2)
    loads = {"a": PoolLoad(running=40)}
    world = Observed(now=NOW, nodes=NODES)
    decided = plan_factory(f, REGIONS, world, OperatorSettings(),
                           autoscale_pools(f, REGIONS, {}, loads, AT))  # fmt: skip
    body = f.to_wire()
    body["status"] = decided.status.to_wire()
    remembered = InferenceFactory.model_validate(body)
    later = Observed(now="2026-01-01T00:09:00Z", nodes=NODES)
    held = plan_factory(remembered, REGIONS, later, OperatorSettings(),
                        held_autoscaling(remembered, REGIONS, {}))  # fmt: skip
    kept = [c for c in held.status.conditions if c.type == "CapacityPressure"]
    assert kept == [c for c in decided.status.conditions if c.type == "CapacityPressure"]
    assert kept[0].status == "True"


def _live(managers: list[tuple[str, str, dict[str, Any]]], replicas: int = 3) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "llama-a",
            "managedFields": [
                {"manager": m, "operation": op, "fieldsV1": fields} for m, op, fields in managers
            ],
        },
        "spec": {"replicas": replicas},
    }


MANIFEST = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "llama-a", "namespace": "ml"},
    "spec": {"template": {}},
}
OURS = ("inference-factory", "Apply", {"f:spec": {"f:replicas": {}, "f:template": {}}})


def test_replicas_are_handed_over_once_before_the_manifest_drops_them() -> None:
    live = _live([OURS])
    assert owns_replicas(live)
    handover = replicas_handover(MANIFEST, live)
    assert handover == {"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": "llama-a", "namespace": "ml"},
                        "spec": {"replicas": 3}}  # fmt: skip
    # Once the operator's manager no longer owns them (KEDA, the HPA or the hand-over does):
    others = _live([("inference-factory", "Apply", {"f:spec": {"f:template": {}}}),
                    (HANDOVER_MANAGER, "Apply", {"f:spec": {"f:replicas": {}}})])  # fmt: skip
    assert replicas_handover(MANIFEST, others) is None
    # Nothing to hand over: a manifest with replicas, or no Deployment yet.
    assert replicas_handover({**MANIFEST, "spec": {"replicas": 1}}, live) is None
    assert replicas_handover(MANIFEST, None) is None


def _values(metrics: OperatorMetrics, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for m in metrics.registry.collect()
        for s in m.samples
        if s.name == name
    }


def test_autoscaling_gauges_replace_their_series_and_go_with_the_factory() -> None:
    metrics = OperatorMetrics()
    metrics.set_autoscaling("ml", "llama", {("a", "eu-west-1", "EU", "operator"): 4},
                            {"EU": (32.0, 4)})  # fmt: skip
    metrics.set_autoscaling("ml", "llama", {("a", "eu-west-1", "EU", "external"): 5}, None)
    desired = _values(metrics, "inference_factory_pool_desired_replicas")
    assert list(desired.values()) == [5] and ("mode", "external") in next(iter(desired))
    missing = _values(metrics, "factory_operator_capacity_pressure_missing_requests")
    assert list(missing.values()) == [32]  # None kept what the last decision exported
    metrics.set_autoscaling("ml", "llama", {}, {"EU": (0.0, 0)})
    assert list(
        _values(metrics, "factory_operator_capacity_pressure_missing_requests").values()
    ) == [0]
    metrics.forget_factory("ml", "llama")
    assert _values(metrics, "factory_operator_capacity_pressure_missing_requests") == {}
    assert _values(metrics, "inference_factory_pool_desired_replicas") == {}


def test_the_prometheus_url_and_interval_are_flags_and_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = parse_args(["--prometheus-url", "http://prom:9090", "--autoscale-interval", "5"])
    assert (settings.prometheus_url, settings.autoscale_interval_seconds) == (
        "http://prom:9090",
        5.0,
    )
    assert parse_args(["--prometheus-url", ""]).prometheus_url is None
    monkeypatch.setenv("FACTORY_OPERATOR_PROMETHEUS_URL", "http://env:9090")
    assert parse_args([]).prometheus_url == "http://env:9090"
    monkeypatch.setenv("FACTORY_OPERATOR_PROMETHEUS_URL", "")
    assert parse_args([]).prometheus_url is None
    assert OperatorSettings().autoscale_interval_seconds == 15.0


def test_growth_goes_to_the_pool_cheaper_per_token_when_throughput_is_known() -> None:
    """eu-west-1's H100 costs less per hour than eu-central-1's (7.57 vs 7.91 in the sample
    pricing); measured throughput makes eu-central-1 cheaper per token: it grows first."""
    pools = [
        {**pool("west", "eu-west-1"), "replicas": {"min": 1, "max": 8}},
        {**pool("central", "eu-central-1"), "replicas": {"min": 1, "max": 8}},
    ]
    body = factory(pools, residency=["EU"], engine={"args": {"maxNumSeqs": 10}}).to_wire()
    body["spec"]["autoscaling"] = FAST
    f = InferenceFactory.model_validate(body)
    regions = {
        name: REGIONS[name].model_copy(
            update={"spec": REGIONS[name].spec.model_copy(update={"pricing": {"H100": price}})}
        )
        for name, price in (("eu-west-1", 7.57), ("eu-central-1", 7.91))
    }
    deployments = {"west": _deployment("west", 1), "central": _deployment("central", 1)}
    by_slot = {"west": PoolLoad(running=16), "central": PoolLoad(running=16)}
    plan = autoscale_pools(f, regions, deployments, by_slot, AT)
    assert (plan.pools["west"].desired, plan.pools["central"].desired) == (3, 1)
    by_token = {
        "west": PoolLoad(running=16, tokens_per_second=500),
        "central": PoolLoad(running=16, tokens_per_second=900),
    }
    plan = autoscale_pools(f, regions, deployments, by_token, AT)
    assert (plan.pools["west"].desired, plan.pools["central"].desired) == (1, 3)
    assert plan.pools["west"].status.reason == "Deferred"


def test_a_decision_is_logged_in_the_events_words_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f = _factory()
    scaling = autoscale_pools(f, REGIONS, {"a": _deployment("a", 1)}, {"a": PoolLoad(running=30)},
                              AT)  # fmt: skip
    plan = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), OperatorSettings(), scaling)
    metrics = OperatorMetrics()
    with caplog.at_level(logging.INFO, logger="factory_operator.handlers.reconcile"):
        record_autoscaling(metrics, f, plan, scaling)
    assert "autoscaler: pool a: 1 -> 4 replicas (ScaleUp): 30 requests" in caplog.text
    labels = {"namespace": "ml", "factory": "llama", "pool": "a", "direction": "Up"}
    assert metrics.registry.get_sample_value("factory_operator_scale_events_total", labels) == 1
    desired = {"namespace": "ml", "factory": "llama", "pool": "a", "region": "eu-west-1",
               "jurisdiction": "EU", "mode": "operator"}  # fmt: skip
    assert (
        metrics.registry.get_sample_value("inference_factory_pool_desired_replicas", desired) == 4
    )
    # A reconcile that kept the counts logs and counts nothing.
    caplog.clear()
    remembered = _remembered(f, dict(scaling.pools))
    held = held_autoscaling(remembered, REGIONS, {"a": _deployment("a", 4)})
    record_autoscaling(metrics, remembered, plan, held)
    assert "autoscaler" not in caplog.text
    assert metrics.registry.get_sample_value("factory_operator_scale_events_total", labels) == 1
