"""The autoscaler against the real API server and a real Prometheus (issue 17).

The operator runs in-process with ``--prometheus-url`` pointing at a Prometheus that scrapes a
load page the test sets (``prometheus_kit``), and decides every second. Shown here: a surge
scales a pool up at once and its end scales it back down after the window, one step at a
time, without flapping (scale events counted); a pool with min == max is never touched; a
jurisdiction whose pools are all at their ceiling reports CapacityPressure with the missing
capacity (condition, metric, one Event), and a pool outside the residency is never deployed;
mode external leaves the Deployment's replicas to whoever owns them (KEDA, an HPA) and
publishes the desired count; without a Prometheus URL pools are held at min and say so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.integration.operator.conftest import (
    RunningOperator,
    condition,
    get,
    running_operator,
    wait_condition,
)
from tests.integration.operator.factories import as_json
from tests.integration.operator.prometheus_kit import LoadSource, PoolKey
from tests.support.cluster import KubectlCluster
from tests.support.waiting import wait_until

# maxNumSeqs 10 at the balanced policy's batchUtilization 0.8: 8 requests per replica.
PER_REPLICA = 8
# Windows short enough for a test: no projection (expected startup 0), up at once in steps of
# 4, down one replica at a time, 3 s after any change and to the highest count of the last 6 s.
FAST = {
    "expectedStartupSeconds": 0,
    "scaleUp": {"stabilizationSeconds": 0, "maxStepReplicas": 4},
    "scaleDown": {"stabilizationSeconds": 6, "cooldownSeconds": 3, "maxStepReplicas": 1},
}
# The bound for a scale-up after the queue builds (the local fleet's scrape and
# decision intervals are a second each here, as in the local fleet).
SCALE_UP_SECONDS = 15


def _pool(name: str, region: str, low: int, high: int) -> dict[str, Any]:
    return {"name": name, "region": region,
            "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
            "replicas": {"min": low, "max": high}}  # fmt: skip


def _factory(pools: list[dict[str, Any]], **autoscaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": "inference.factory.dev/v1alpha1",
        "kind": "InferenceFactory",
        "metadata": {"name": "llama"},
        "spec": {
            "model": {"name": "llama-3.1-8b-instruct",
                      "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": {"args": {"maxModelLen": 8192, "maxNumSeqs": 10}},
            "residency": {"jurisdictions": ["EU"]},
            "autoscaling": {**FAST, **autoscaling},
            "pools": pools,
        },
    }  # fmt: skip


@pytest.fixture
def autoscaler(
    operator_cluster: KubectlCluster, namespace: str, load_source: LoadSource
) -> Iterator[RunningOperator]:
    """The operator reading the test's Prometheus, deciding every second."""
    with running_operator(
        namespace, prometheus_url=load_source.url, autoscale_interval_seconds=1.0
    ) as running:
        yield running


def _apply(cluster: KubectlCluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(obj))


def _replicas(cluster: KubectlCluster, namespace: str, name: str) -> int | None:
    deployment = get(cluster, "deployment", name, namespace)
    return None if deployment is None else int(deployment["spec"].get("replicas", 0))


def _pool_status(cluster: KubectlCluster, namespace: str, pool: str) -> dict[str, Any]:
    factory = get(cluster, "inferencefactory", "llama", namespace) or {}
    for entry in (factory.get("status") or {}).get("pools") or []:
        if entry["name"] == pool:
            found: dict[str, Any] = entry
            return found
    return {}


def _decision(cluster: KubectlCluster, namespace: str, pool: str) -> dict[str, Any]:
    found: dict[str, Any] = _pool_status(cluster, namespace, pool).get("autoscaling") or {}
    return found


def _events(cluster: KubectlCluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "events", "-n", namespace, "-o", "json")
    return [
        e for e in json.loads(out)["items"]
        if e.get("reason") == reason and e["involvedObject"].get("name") == "llama"
    ]  # fmt: skip


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _after_more_decisions(
    cluster: KubectlCluster, namespace: str, pool: str, seconds: float, timeout: float = 60
) -> None:
    """Wait until the autoscaler has kept deciding for ``seconds`` more (its status records
    when it last read the pool's load): what happens meanwhile is what the test checks."""
    seen = wait_until(lambda: _decision(cluster, namespace, pool).get("demandTime"), timeout,
                      what=f"{pool}: a decision in status")  # fmt: skip
    start = _time(str(seen))

    def moved_on() -> bool:
        seen = _decision(cluster, namespace, pool).get("demandTime")
        return bool(seen) and _time(seen) >= start + timedelta(seconds=seconds)

    wait_until(moved_on, timeout, interval=0.25, what=f"{seconds} s more of decisions")


def _wait_decision(
    cluster: KubectlCluster, namespace: str, pool: str, timeout: float = 10, **wanted: Any
) -> dict[str, Any]:
    """The pool's autoscaling status once it holds every ``wanted`` field."""

    def found() -> dict[str, Any] | None:
        decision = _decision(cluster, namespace, pool)
        return decision if all(decision.get(k) == v for k, v in wanted.items()) else None

    return wait_until(found, timeout, what=f"{pool}: autoscaling status {wanted}")


def _sample(running: RunningOperator, name: str, **labels: str) -> float | None:
    value: float | None = running.metrics.registry.get_sample_value(name, labels)
    return value


def test_a_surge_scales_up_at_once_and_its_end_scales_down_after_the_window_without_flapping(
    operator_cluster: KubectlCluster,
    namespace: str,
    load_source: LoadSource,
    autoscaler: RunningOperator,
) -> None:
    cluster = operator_cluster
    dub = PoolKey(namespace, "llama", "dub")
    load_source.page.set(dub, running=0, waiting=0)
    _apply(cluster, namespace, _factory([_pool("dub", "eu-west-1", 1, 4)]))
    wait_until(lambda: _decision(cluster, namespace, "dub").get("reason") == "Steady", 60,
               what="a first decision on the idle pool")  # fmt: skip
    assert _replicas(cluster, namespace, "llama-dub") == 1

    # 30 requests in flight, 8 per replica: 4 replicas, in one step.
    load_source.page.set(dub, running=22, waiting=8)
    wait_until(lambda: _replicas(cluster, namespace, "llama-dub") == 4, SCALE_UP_SECONDS,
               interval=0.2, what="the surge's scale-up")  # fmt: skip
    up = wait_until(lambda: _events(cluster, namespace, "ScaledUp"), 10, what="ScaledUp event")
    assert len(up) == 1 and "pool dub: 1 -> 4 replicas (ScaleUp): 30 requests" in up[0]["message"]
    decision = _wait_decision(cluster, namespace, "dub", currentReplicas=4)
    assert (decision["desiredReplicas"], decision["lastScaleDirection"]) == (4, "Up")
    assert _pool_status(cluster, namespace, "dub")["desiredReplicas"] == 4

    # The surge ends: one replica at a time, each after the window and the cooldown.
    load_source.page.set(dub, running=0, waiting=0)
    counts: list[int] = []

    def back_at_min() -> bool:
        replicas = _replicas(cluster, namespace, "llama-dub")
        if replicas is not None and (not counts or counts[-1] != replicas):
            counts.append(replicas)
        return replicas == 1

    wait_until(back_at_min, 90, interval=0.2, what="the scale-down to min")
    assert counts == [4, 3, 2, 1], counts  # never up again on the way down
    _after_more_decisions(cluster, namespace, "dub", seconds=8)
    assert _replicas(cluster, namespace, "llama-dub") == 1
    downs = _events(cluster, namespace, "ScaledDown")
    assert len(_events(cluster, namespace, "ScaledUp")) == 1 and len(downs) == 3, downs
    assert all("(ScaleDown): 0 requests" in e["message"] for e in downs)
    labels = {"namespace": namespace, "factory": "llama", "pool": "dub"}
    assert _sample(autoscaler, "factory_operator_scale_events_total", **labels, direction="Up") == 1
    down = _sample(autoscaler, "factory_operator_scale_events_total", **labels, direction="Down")
    assert down == 3
    assert _decision(cluster, namespace, "dub")["reason"] == "Steady"


def test_capacity_pressure_names_the_jurisdiction_and_what_is_missing(
    operator_cluster: KubectlCluster,
    namespace: str,
    load_source: LoadSource,
    autoscaler: RunningOperator,
) -> None:
    """EU: dub (eu-west-1, 1..2) and fra (eu-central-1, pinned at 1) carry 40 and 16 requests
    at 8 per replica: at their ceilings (2 + 1 replicas, 24 requests) 32 requests, 4 replicas
    of dub (the cheaper H100 region, preferred), are missing. The US pool is outside the
    residency: never deployed, whatever its load."""
    cluster = operator_cluster
    page = load_source.page
    page.set(PoolKey(namespace, "llama", "dub"), running=40)
    page.set(PoolKey(namespace, "llama", "fra"), running=16)
    page.set(PoolKey(namespace, "llama", "us"), running=500)
    pools = [_pool("dub", "eu-west-1", 1, 2), _pool("fra", "eu-central-1", 1, 1),
             _pool("us", "us-east-1", 1, 4)]  # fmt: skip
    _apply(cluster, namespace, _factory(pools))

    expected = (
        "EU: every pool at its ceiling (dub, fra); 32 requests, about 4 more replicas of dub, "
        "have nowhere compliant to go"
    )

    def pressure() -> dict[str, Any] | None:
        found = condition(get(cluster, "inferencefactory", "llama", namespace), "CapacityPressure")
        return found if found and found["message"] == expected else None

    found = wait_until(pressure, 60, what="CapacityPressure with the missing capacity")
    assert (found["status"], found["reason"]) == ("True", "AllPoolsAtMax")
    metric = {"namespace": namespace, "factory": "llama", "jurisdiction": "EU"}
    missing = "factory_operator_capacity_pressure_missing_"
    assert _sample(autoscaler, f"{missing}requests", **metric) == 32
    assert _sample(autoscaler, f"{missing}replicas", **metric) == 4
    assert _replicas(cluster, namespace, "llama-dub") == 2
    fra = wait_until(lambda: get(cluster, "deployment", "llama-fra", namespace), 10, what="fra")
    _after_more_decisions(cluster, namespace, "dub", seconds=4)

    # The pinned pool: its Deployment never changed (generation 1), its status says why.
    assert _replicas(cluster, namespace, "llama-fra") == 1
    now = get(cluster, "deployment", "llama-fra", namespace) or {}
    assert now["metadata"]["generation"] == fra["metadata"]["generation"] == 1
    assert _decision(cluster, namespace, "fra")["reason"] == "Pinned"
    assert _pool_status(cluster, namespace, "us")["state"] == "Blocked"
    assert _decision(cluster, namespace, "us") == {}
    assert get(cluster, "deployment", "llama-us", namespace) is None
    # One Warning when the pressure began, not one per decision.
    assert len(_events(cluster, namespace, "CapacityPressure")) == 1

    page.set(PoolKey(namespace, "llama", "dub"), running=0)
    page.set(PoolKey(namespace, "llama", "fra"), running=0)
    wait_condition(cluster, namespace, "llama", "CapacityPressure", "False", "WithinCapacity",
                   timeout=30)  # fmt: skip
    assert _sample(autoscaler, f"{missing}requests", **metric) == 0
    ready = condition(get(cluster, "inferencefactory", "llama", namespace), "Ready") or {}
    assert ready["reason"] == "ResidencyViolation"  # the us pool, as ever


def _with_managed_fields(cluster: KubectlCluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json",
                          "--show-managed-fields")  # fmt: skip
    found: dict[str, Any] = json.loads(out)
    return found


def _replicas_owners(deployment: dict[str, Any]) -> set[str]:
    return {
        entry["manager"]
        for entry in deployment["metadata"].get("managedFields") or []
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
    }


def test_mode_external_leaves_the_replicas_alone_and_publishes_the_desired_count(
    operator_cluster: KubectlCluster,
    namespace: str,
    load_source: LoadSource,
    autoscaler: RunningOperator,
) -> None:
    cluster = operator_cluster
    load_source.page.set(PoolKey(namespace, "llama", "dub"), running=30)
    _apply(cluster, namespace, _factory([_pool("dub", "eu-west-1", 1, 4)], mode="external"))
    labels = {"namespace": namespace, "factory": "llama", "pool": "dub", "region": "eu-west-1",
              "jurisdiction": "EU", "mode": "external"}  # fmt: skip
    wait_until(lambda: _sample(autoscaler, "inference_factory_pool_desired_replicas", **labels)
               == 4, 30, what="the desired count published")  # fmt: skip

    # Created at min, then handed over: the operator's field manager no longer owns replicas.
    def handed_over() -> dict[str, Any] | None:
        found = _with_managed_fields(cluster, namespace, "llama-dub")
        return found if found and "inference-factory" not in _replicas_owners(found) else None

    handed = wait_until(handed_over, 30, what="spec.replicas handed over")
    assert handed["spec"]["replicas"] == 1
    assert _replicas_owners(handed) == {"inference-factory-replicas-handover"}

    # KEDA (here kubectl, through the scale subresource as an HPA does) sets 3: it stays 3.
    cluster.kubectl("scale", "deployment", "llama-dub", "-n", namespace, "--replicas=3")
    wait_until(lambda: _pool_status(cluster, namespace, "dub").get("desiredReplicas") == 3, 30,
               what="the status to follow the Deployment")  # fmt: skip
    _after_more_decisions(cluster, namespace, "dub", seconds=4)
    assert _replicas(cluster, namespace, "llama-dub") == 3
    decision = _decision(cluster, namespace, "dub")
    assert (decision["desiredReplicas"], decision["currentReplicas"]) == (4, 3)
    ups = _events(cluster, namespace, "ScaledUp")
    assert len(ups) == 1, ups
    assert "desired 1 -> 4 replicas, published for KEDA/HPA" in ups[0]["message"]
    assert _sample(autoscaler, "inference_factory_pool_desired_replicas", **labels) == 4


def test_without_a_prometheus_url_pools_are_held_at_min_and_say_so(
    operator_cluster: KubectlCluster, namespace: str, load_source: LoadSource
) -> None:
    cluster = operator_cluster
    load_source.page.set(PoolKey(namespace, "llama", "dub"), running=300)
    with running_operator(namespace, autoscale_interval_seconds=1.0):
        _apply(cluster, namespace, _factory([_pool("dub", "eu-west-1", 1, 4)]))
        decision = _wait_decision(cluster, namespace, "dub", timeout=60, reason="NoLoadSource")
        assert "--prometheus-url" in decision["message"]
        wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=90)
        assert _replicas(cluster, namespace, "llama-dub") == 1
        assert _events(cluster, namespace, "ScaledUp") == []


def test_a_restarted_operator_keeps_the_windows_it_had(
    operator_cluster: KubectlCluster, namespace: str, load_source: LoadSource
) -> None:
    """The memory lives in the factory's status: an operator restarted right after a surge
    does not shrink the pool before the window that the last one started (a fresh memory
    would shrink it at its first decision)."""
    cluster = operator_cluster
    dub = PoolKey(namespace, "llama", "dub")
    load_source.page.set(dub, running=30)
    slow_down = {"scaleDown": {"stabilizationSeconds": 20, "cooldownSeconds": 20,
                               "maxStepReplicas": 4}}  # fmt: skip
    settings = {"prometheus_url": load_source.url, "autoscale_interval_seconds": 1.0}
    with running_operator(namespace, **settings):
        _apply(cluster, namespace, _factory([_pool("dub", "eu-west-1", 1, 4)], **slow_down))
        wait_until(lambda: _replicas(cluster, namespace, "llama-dub") == 4, SCALE_UP_SECONDS + 30,
                   interval=0.2, what="the surge's scale-up")  # fmt: skip
        scaled_at = _wait_decision(cluster, namespace, "dub", lastScaleDirection="Up")
        load_source.page.set(dub, running=0)
    with running_operator(namespace, **settings):
        restarted = _decision(cluster, namespace, "dub")["demandTime"]
        held = wait_until(
            lambda: (d := _decision(cluster, namespace, "dub"))["demandTime"] > restarted
            and d["demand"] == 0 and d,
            30, what="a decision of the new operator on the idle pool",
        )  # fmt: skip
        assert _replicas(cluster, namespace, "llama-dub") == 4
        assert held["reason"] in {"Cooldown", "Stabilizing"}, held
        assert held["lastScaleTime"] == scaled_at["lastScaleTime"]
        wait_until(lambda: _replicas(cluster, namespace, "llama-dub") == 1, 60, interval=0.2,
                   what="the scale-down once the window has passed")  # fmt: skip
    assert len(_events(cluster, namespace, "ScaledUp")) == 1
    assert len(_events(cluster, namespace, "ScaledDown")) == 1


def test_a_surge_grows_the_cheaper_pool_of_its_jurisdiction_not_every_pool(
    operator_cluster: KubectlCluster,
    namespace: str,
    load_source: LoadSource,
    autoscaler: RunningOperator,
) -> None:
    """32 requests queue at fra (eu-central-1, H100 at 7.91 an hour in the FleetRegion's
    pricing); dub (eu-west-1, 7.57) is idle. The growth (3 replicas' worth) goes to dub, which
    the router prefers as cheaper, and fra does not grow as well; dub, holding EU's spill, is
    not shrunk while fra's queue lasts, and shrinks once it is gone."""
    cluster = operator_cluster
    page = load_source.page
    page.set(PoolKey(namespace, "llama", "dub"), running=0)
    page.set(PoolKey(namespace, "llama", "fra"), running=32)
    pools = [_pool("dub", "eu-west-1", 1, 4), _pool("fra", "eu-central-1", 1, 4)]
    _apply(cluster, namespace, _factory(pools))

    wait_until(lambda: _replicas(cluster, namespace, "llama-dub") == 3, SCALE_UP_SECONDS + 30,
               interval=0.2, what="dub taking EU's growth")  # fmt: skip
    _after_more_decisions(cluster, namespace, "dub", seconds=8)  # past dub's window (6 s)
    assert (
        _replicas(cluster, namespace, "llama-dub"),
        _replicas(cluster, namespace, "llama-fra"),
    ) == (3, 1)
    assert _decision(cluster, namespace, "dub")["reason"] == "Spill"
    assert _decision(cluster, namespace, "fra")["reason"] == "Deferred"
    ups = _events(cluster, namespace, "ScaledUp")
    assert len(ups) == 1 and ups[0]["message"].startswith("pool dub: 1 -> 3 replicas"), ups
    assert "takes 2 of EU's growth (dub, fra)" in ups[0]["message"]
    assert condition(get(cluster, "inferencefactory", "llama", namespace),
                     "CapacityPressure")["status"] == "False"  # type: ignore[index]  # fmt: skip

    page.set(PoolKey(namespace, "llama", "fra"), running=0)
    wait_until(lambda: _replicas(cluster, namespace, "llama-dub") == 1, 60, interval=0.2,
               what="dub back to min once the queue is gone")  # fmt: skip
    assert _replicas(cluster, namespace, "llama-fra") == 1
    assert len(_events(cluster, namespace, "ScaledUp")) == 1
