"""Residency outcomes, conditions and reasons, status stability, deletions, region mode."""

from __future__ import annotations

from conftest import LATER, NODES, NOW, REGIONS, factory, gpu_node, pool

from factory_operator.plan import (
    ChildRef,
    DeploymentInfo,
    Observed,
    OperatorSettings,
    PodProblem,
    plan_factory,
    plan_region_status,
)


def _cond(plan, type_):  # type: ignore[no-untyped-def]
    return next(c for c in plan.status.conditions if c.type == type_)


def _running(f, settings, now=NOW):  # type: ignore[no-untyped-def]
    """Plan once, then pretend every planned Deployment runs ready at that revision."""
    first = plan_factory(f, REGIONS, Observed(now=now, nodes=NODES), settings)
    deps = {
        p.name: DeploymentInfo(
            f"llama-{p.name}",
            p.name,
            p.desired_replicas,
            p.desired_replicas,
            p.desired_replicas,
            1,
            1,
            p.revision,
        )
        for p in first.status.pools
        if p.revision
    }
    children = [
        ChildRef(
            c["apiVersion"],
            c["kind"],
            c["metadata"]["name"],
            c["metadata"]["labels"]["inference.factory.dev/pool"],
        )
        for c in first.apply
    ]
    return Observed(now=now, nodes=NODES, deployments=deps, children=children)


def test_all_ready(settings: OperatorSettings) -> None:
    f = factory([pool("a", "eu-west-1"), pool("b", "eu-central-1")], residency=["EU"])
    plan = plan_factory(f, REGIONS, _running(f, settings), settings)
    assert _cond(plan, "Ready").status == "True"
    assert _cond(plan, "Progressing").status == "False"
    assert _cond(plan, "Degraded").status == "False"
    assert plan.status.pools_ready == "2/2" and plan.status.jurisdictions == "EU"
    assert plan.delete == [] and plan.events == []


def test_residency_violation_blocks_only_that_pool(settings: OperatorSettings) -> None:
    f = factory([pool("eu", "eu-west-1"), pool("us", "us-east-1")], residency=["EU"])
    plan = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), settings)
    assert {c["metadata"]["name"] for c in plan.apply} == {"llama-eu"}
    ready = _cond(plan, "Ready")
    assert (ready.status, ready.reason) == ("False", "ResidencyViolation")
    assert "pool us" in ready.message and "US" in ready.message
    us = next(p for p in plan.status.pools if p.name == "us")
    assert us.state == "Blocked" and us.desired_replicas == 0


def test_unknown_region(settings: OperatorSettings) -> None:
    plan = plan_factory(factory([pool("x", "mars-1")]), REGIONS, Observed(now=NOW), settings)
    assert plan.apply == []
    assert _cond(plan, "Ready").reason == "UnknownRegion"


def test_running_pool_made_non_compliant_is_stopped(settings: OperatorSettings) -> None:
    f = factory([pool("a", "eu-west-1"), pool("b", "eu-central-1")], residency=["EU"])
    world = _running(f, settings)
    moved = dict(REGIONS)
    moved["eu-central-1"] = moved["eu-central-1"].model_copy(
        update={"spec": moved["eu-central-1"].spec.model_copy(update={"jurisdiction": "UK"})}
    )
    plan = plan_factory(f, moved, world, settings)
    assert {(c.kind, c.name) for c in plan.delete} == {
        ("Deployment", "llama-b"),
        ("Service", "llama-b"),
        ("PodDisruptionBudget", "llama-b"),
    }
    assert [e.reason for e in plan.events] == ["PoolStopped"]
    assert _cond(plan, "Ready").reason == "ResidencyViolation"


def test_removed_pool_children_deleted(settings: OperatorSettings) -> None:
    f = factory([pool("a", "eu-west-1"), pool("b", "eu-central-1")])
    world = _running(f, settings)
    plan = plan_factory(factory([pool("a", "eu-west-1")]), REGIONS, world, settings)
    assert {c.pool for c in plan.delete} == {"b"}
    assert plan.events == []


def test_no_default_image_for_unknown_neuron_type(settings: OperatorSettings) -> None:
    f = factory(
        [pool("t", "eu-west-1", "neuron", "trn9", engine={"args": {"tensorParallelSize": 8}})]
    )
    plan = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), settings)
    assert _cond(plan, "Ready").reason == "NoDefaultImage" and plan.apply == []
    f2 = factory(
        [
            pool(
                "t",
                "eu-west-1",
                "neuron",
                "trn9",
                engine={"image": "example.com/vllm-neuron:1", "args": {"tensorParallelSize": 8}},
            )
        ]
    )
    assert plan_factory(f2, REGIONS, Observed(now=NOW, nodes=NODES), settings).apply


def test_tensor_parallel_mismatch_is_invalid_spec(settings: OperatorSettings) -> None:
    f = factory([pool("a", "eu-west-1", count=2)], engine={"args": {"tensorParallelSize": 4}})
    plan = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), settings)
    assert _cond(plan, "Ready").reason == "InvalidSpec"
    assert plan.permanent_error and "tensorParallelSize 4" in plan.permanent_error


def test_insufficient_accelerators(settings: OperatorSettings) -> None:
    f = factory([pool("big", "eu-west-1", count=16)])
    plan = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), settings)
    degraded = _cond(plan, "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "InsufficientAccelerators")
    assert "16 nvidia.com/gpu" in degraded.message
    assert plan.apply  # still deployed: an autoscaler may bring bigger nodes


def test_unschedulable_and_rejected_pods(settings: OperatorSettings) -> None:
    f = factory([pool("a", "eu-west-1")])
    msg = "0/5 nodes are available: 5 Insufficient nvidia.com/gpu."
    plan = plan_factory(
        f,
        REGIONS,
        Observed(now=NOW, nodes=NODES, problems=[PodProblem("a", "Unschedulable", msg)]),
        settings,
    )
    assert _cond(plan, "Degraded").reason == "InsufficientAccelerators"
    plan = plan_factory(
        f,
        REGIONS,
        Observed(
            now=NOW,
            nodes=NODES,
            problems=[PodProblem("a", "FailedCreate", "pods forbidden: violates PodSecurity")],
        ),
        settings,
    )
    assert _cond(plan, "Ready").reason == "PodsRejected"


def test_status_stable_when_nothing_changes(settings: OperatorSettings) -> None:
    f = factory([pool("a", "eu-west-1"), pool("us", "us-east-1")], residency=["EU"])
    world = _running(f, settings)
    first = plan_factory(f, REGIONS, world, settings)
    again = factory(
        [pool("a", "eu-west-1"), pool("us", "us-east-1")],
        residency=["EU"],
        status=first.status.to_wire(),
    )
    later = _running(again, settings, now=LATER)
    second = plan_factory(again, REGIONS, later, settings)
    assert second.status == first.status
    assert second.apply == first.apply and second.delete == []


def test_transition_time_moves_only_on_status_change(settings: OperatorSettings) -> None:
    f = factory([pool("a", "eu-west-1")])
    first = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), settings)
    assert _cond(first, "Ready").status == "False"
    g = factory([pool("a", "eu-west-1")], status=first.status.to_wire())
    second = plan_factory(g, REGIONS, _running(g, settings, now=LATER), settings)
    assert _cond(second, "Ready").last_transition_time == LATER
    assert _cond(second, "Degraded").last_transition_time == NOW  # stayed False


def test_region_mode_reports_other_pools_managed_elsewhere() -> None:
    settings = OperatorSettings(region="eu-west-1")
    f = factory([pool("a", "eu-west-1"), pool("b", "ap-south-1")])
    plan = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), settings)
    assert {c["metadata"]["name"] for c in plan.apply} == {"llama-a"}
    assert next(p for p in plan.status.pools if p.name == "b").state == "ManagedElsewhere"
    assert _cond(plan, "Ready").reason != "ManagedElsewhere"


def test_region_status() -> None:
    status = plan_region_status(REGIONS["eu-west-1"], [*NODES, gpu_node("x", "eu-west-1")], NOW)
    assert status.nodes == 3 and status.ready_nodes == 3
    assert "16 nvidia.com/gpu" in status.accelerator_summary
