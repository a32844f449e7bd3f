"""Once converged the operator reads from memory: its resyncs send no read request at all
(issue 16, item 3), while a change still reaches it through the watches."""

from __future__ import annotations

import json

from prometheus_client import Counter

from factory_operator.k8s import OperatorMetrics
from tests.integration.operator.conftest import RunningOperator, wait_condition
from tests.integration.operator.factories import as_json, factory
from tests.support.cluster import KubectlCluster
from tests.support.waiting import wait_until


def _total(counter: Counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples
               if s.name.endswith("_total"))  # fmt: skip


def _reads(metrics: OperatorMetrics) -> dict[str, float]:
    return {s.labels["kind"]: s.value for m in metrics.api_reads.collect() for s in m.samples
            if s.name.endswith("_total")}  # fmt: skip


def test_converged_resyncs_read_nothing_from_the_api_server(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator
) -> None:
    cluster, metrics = operator_cluster, operator.metrics
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(factory()))
    wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=90)
    reads, ticks = _reads(metrics), _total(metrics.reconciles)
    # The fixture's resync is 2 s: five reconciles of the converged factory.
    wait_until(lambda: _total(metrics.reconciles) >= ticks + 5, 60, what="5 resyncs")
    assert _reads(metrics) == reads

    # A change of a child reaches the operator through its watch, still without a read: a
    # Service deleted by hand is put back.
    services = json.loads(cluster.kubectl("get", "services", "-n", namespace, "-o", "json"))
    name = services["items"][0]["metadata"]["name"]
    cluster.kubectl("delete", "service", name, "-n", namespace)
    wait_until(lambda: cluster.run("get", "service", name, "-n", namespace).returncode == 0,
               60, what=f"Service {name} put back")  # fmt: skip
    assert _reads(metrics) == reads
