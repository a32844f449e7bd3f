"""Once converged the operator writes nothing; a region leaving the allowed jurisdictions
stops its pool (fail closed) and coming back restores it."""

from __future__ import annotations

import json
from typing import Any

from kopf.testing import KopfRunner

from factory_operator.handlers import build_registry
from factory_operator.k8s import Kube, OperatorMetrics, load_api_client
from tests.integration.operator.conftest import (
    RunningOperator,
    collect_runner_garbage,
    condition,
    get,
    operator_settings,
    wait_condition,
)
from tests.integration.operator.factories import as_json, factory
from tests.support.audit import AuditReader, audit_log, operator_writes
from tests.support.cluster import KubectlCluster
from tests.support.waiting import wait_until


def _reconciles(metrics: OperatorMetrics) -> float:
    return sum(s.value for m in metrics.reconciles.collect() for s in m.samples
               if s.name.endswith("_total"))  # fmt: skip


def _run_operator(namespace: str, resync: float) -> tuple[KopfRunner, OperatorMetrics]:
    settings = operator_settings(namespace, resync_seconds=resync)
    metrics = OperatorMetrics()
    registry = build_registry(settings, lambda: Kube(load_api_client(), settings, metrics),
                              metrics)  # fmt: skip
    runner = KopfRunner(["run", "--standalone", "--namespace", namespace], registry=registry,
                        timeout=60)  # fmt: skip
    return runner, metrics


def test_converged_operator_writes_nothing_over_50_ticks_and_a_restart(
    operator_cluster: KubectlCluster, namespace: str
) -> None:
    cluster = operator_cluster
    runner, metrics = _run_operator(namespace, resync=0.1)
    with runner:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(factory()))
        wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=90)
        # Converged: let reconciles pass until one full tick brings no write.
        wait_until(lambda: _quiet_tick(metrics), 30, what="a reconcile that writes nothing")
        audit = AuditReader(audit_log(cluster.kubeconfig_path))
        writes, ticks = metrics.writes_total(), _reconciles(metrics)
        wait_until(lambda: _reconciles(metrics) >= ticks + 50, 60, what="50 timer ticks")
        assert metrics.writes_total() == writes, _writes_by_kind(metrics)
    collect_runner_garbage()
    assert runner.exception is None

    restarted, metrics2 = _run_operator(namespace, resync=0.1)
    with restarted:
        wait_until(lambda: _reconciles(metrics2) >= 5, 60, what="the restarted operator's ticks")
        assert metrics2.writes_total() == 0
    collect_runner_garbage()
    assert restarted.exception is None
    # The API server's own record: no write by the operator (its client or kopf) at all.
    assert operator_writes(audit.read(), namespace) == []


def _writes_by_kind(metrics: OperatorMetrics) -> dict[str, float]:
    return {f"{s.labels['verb']} {s.labels['kind']}": s.value
            for m in metrics.api_writes.collect() for s in m.samples
            if s.name.endswith("_total")}  # fmt: skip


_last: dict[int, tuple[float, float]] = {}


def _quiet_tick(metrics: OperatorMetrics) -> bool:
    now = (metrics.writes_total(), _reconciles(metrics))
    before = _last.get(id(metrics))
    _last[id(metrics)] = now
    return before is not None and now[1] > before[1] and now[0] == before[0]


def _set_jurisdiction(cluster: KubectlCluster, region: str, jurisdiction: str) -> None:
    cluster.kubectl("patch", "fleetregion", region, "--type=merge",
                    "-p", json.dumps({"spec": {"jurisdiction": jurisdiction}}))  # fmt: skip


def _events(cluster: KubectlCluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", "events", "-n", namespace, "-o", "json")
    )["items"]
    return items


def test_region_leaving_the_jurisdiction_stops_its_pool_and_returning_restores_it(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator
) -> None:
    cluster = operator_cluster
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(factory()))
    wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=90)
    try:
        _set_jurisdiction(cluster, "eu-central-1", "US")
        wait_until(lambda: get(cluster, "deployment", "llama-inf2-fra", namespace) is None, 15,
                   what="the non-compliant pool to stop")  # fmt: skip
        cond = wait_condition(cluster, namespace, "llama", "Ready", "False", "ResidencyViolation")
        assert "inf2-fra" in cond["message"] and "US" in cond["message"]
        # The compliant pool keeps running.
        assert get(cluster, "deployment", "llama-h100-dub", namespace) is not None
        stopped = wait_until(
            lambda: [e for e in _events(cluster, namespace) if "inf2-fra" in e["message"]
                     and e["reason"] in {"PoolStopped", "ResidencyViolation"}],
            30, what="an Event about the stopped pool")  # fmt: skip
        assert stopped[0]["type"] == "Warning"
    finally:
        _set_jurisdiction(cluster, "eu-central-1", "EU")
    wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=60)
    assert get(cluster, "deployment", "llama-inf2-fra", namespace) is not None
    factory_obj = get(cluster, "inferencefactory", "llama", namespace)
    assert condition(factory_obj, "Degraded")["status"] == "False"  # type: ignore[index]
