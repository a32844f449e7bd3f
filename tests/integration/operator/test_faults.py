"""Faults: the operator SIGKILLed mid-reconcile, a factory deleted while it is down, and a
concurrent writer changing its children."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.operator.conftest import (
    RunningOperator,
    get,
    operator_process,
    wait_condition,
)
from tests.integration.operator.factories import as_json, factory
from tests.support.audit import AuditReader, audit_log, operator_writes
from tests.support.cluster import KubectlCluster
from tests.support.waiting import wait_until

H100 = {"kind": "nvidia", "type": "H100", "count": 1}
THREE_POOLS = [
    {"name": "h100-dub", "region": "eu-west-1", "accelerator": H100,
     "replicas": {"min": 1, "max": 4}},
    {"name": "h100-fra", "region": "eu-central-1", "accelerator": H100,
     "replicas": {"min": 1, "max": 4}},
    {"name": "inf2-fra", "region": "eu-central-1",
     "accelerator": {"kind": "neuron", "type": "inf2", "count": 1},
     "replicas": {"min": 1, "max": 2},
     "engine": {"args": {"maxModelLen": 4096, "maxNumSeqs": 8}}},
]  # fmt: skip


def _children(cluster: KubectlCluster, namespace: str) -> dict[str, list[str]]:
    found = {}
    for kind in ("deployments", "services", "poddisruptionbudgets"):
        out = cluster.kubectl("get", kind, "-n", namespace, "-l",
                              "inference.factory.dev/factory=llama", "-o", "json")  # fmt: skip
        found[kind] = sorted(i["metadata"]["name"] for i in json.loads(out)["items"])
    return found


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_sigkill_during_reconcile_20_times_still_converges_to_one_set_of_children(
    operator_cluster: KubectlCluster, namespace: str, tmp_path: Path
) -> None:
    cluster = operator_cluster
    rng = random.Random(20261126)
    audit = AuditReader(audit_log(cluster.kubeconfig_path))
    spec = factory(pools=THREE_POOLS)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(spec))
    log = tmp_path / "operator.log"
    for round_ in range(20):
        # Change the spec every round so that each operator start has work in flight.
        pool = spec["spec"]["pools"][round_ % 3]
        pool["replicas"]["min"] = 1 + (round_ // 3) % 2
        pool.setdefault("engine", {}).setdefault("args", {})["maxNumSeqs"] = 8 + round_
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(spec))
        proc = operator_process(cluster, namespace, log)
        kill_after = rng.randint(1, 4)  # the k-th write of this run: a random point mid-reconcile
        seen: list[object] = []

        def reached(
            kill_after: int = kill_after,
            seen: list[object] = seen,
            proc: subprocess.Popen[bytes] = proc,
        ) -> bool:
            seen.extend(operator_writes(audit.read(), namespace))
            return len(seen) >= kill_after or proc.poll() is not None

        # Already converged means nothing left to write: then it is killed idle instead.
        with contextlib.suppress(AssertionError):
            wait_until(reached, 15, interval=0.01, what=f"write {kill_after} of round {round_}")
        assert proc.poll() is None, log.read_text()[-3000:]
        _kill(proc)

    proc = operator_process(cluster, namespace, log)
    try:
        wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=90)
        expected = sorted(f"llama-{p['name']}" for p in THREE_POOLS)
        children = _children(cluster, namespace)
        assert children == {k: expected for k in children}, children
        for pool in spec["spec"]["pools"]:
            dep = get(cluster, "deployment", f"llama-{pool['name']}", namespace)
            assert dep is not None and dep["spec"]["replicas"] == pool["replicas"]["min"]
    finally:
        _kill(proc)


def test_factory_deleted_while_the_operator_is_down_is_cleaned_up_after_restart(
    operator_cluster: KubectlCluster, namespace: str, tmp_path: Path
) -> None:
    cluster = operator_cluster
    log = tmp_path / "operator.log"
    proc = operator_process(cluster, namespace, log)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(factory()))
    wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=90)
    _kill(proc)
    cluster.kubectl("delete", "inferencefactory", "llama", "-n", namespace, "--wait=false")
    proc = operator_process(cluster, namespace, log)
    try:
        wait_until(lambda: get(cluster, "inferencefactory", "llama", namespace) is None, 60,
                   what="the factory to be gone")  # fmt: skip
        wait_until(lambda: not any(_children(cluster, namespace).values()), 60,
                   what="its children to be gone")  # fmt: skip
    finally:
        _kill(proc)


def test_concurrent_writer_changing_a_child_does_not_break_the_operator(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator
) -> None:
    cluster = operator_cluster
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(factory()))
    wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=90)
    # Another writer scales our Deployment and edits its labels; the operator takes its
    # fields back (server-side apply with force) and goes on.
    for _ in range(5):
        cluster.kubectl("scale", "deployment", "llama-h100-dub", "-n", namespace,
                        "--replicas=5")  # fmt: skip
        cluster.kubectl("label", "deployment", "llama-h100-dub", "-n", namespace,
                        "inference.factory.dev/pool=intruder", "--overwrite")  # fmt: skip

    def restored() -> dict[str, Any] | None:
        dep = get(cluster, "deployment", "llama-h100-dub", namespace)
        ok = (
            dep
            and dep["spec"]["replicas"] == 2
            and dep["metadata"]["labels"]["inference.factory.dev/pool"] == "h100-dub"
        )
        return dep if ok else None

    wait_until(restored, 60, what="the operator to restore its Deployment")
    wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=60)
    # The `operator` fixture fails the test if the operator itself ended with an exception.
