"""A model claim that only one node can attach (ReadWriteOnce) is reported when the factory's
replicas need it on several; a ReadOnlyMany one is not."""

from __future__ import annotations

import json

import pytest

from tests.integration.operator.conftest import RunningOperator, condition, get, wait_condition
from tests.integration.operator.factories import as_json, factory
from tests.support.cluster import KubectlCluster
from tests.support.waiting import wait_until


def _claim(cluster: KubectlCluster, namespace: str, name: str, mode: str) -> None:
    spec = {"accessModes": [mode], "resources": {"requests": {"storage": "20Gi"}}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
             "spec": spec}  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(claim))


@pytest.mark.parametrize(("mode", "reported"), [("ReadWriteOnce", True), ("ReadOnlyMany", False)])
def test_model_claim_access_mode_is_checked(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator,
    mode: str, reported: bool,
) -> None:  # fmt: skip
    cluster = operator_cluster
    _claim(cluster, namespace, "weights", mode)
    obj = factory()
    obj["spec"]["model"] = {"name": "llama", "uri": "pvc://weights/llama-8b"}
    obj["spec"]["pools"] = obj["spec"]["pools"][:1]  # h100-dub, 2 replicas
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(obj))
    if reported:
        cond = wait_condition(cluster, namespace, "llama", "Degraded", "True", "VolumeNotShared")
        assert "model claim weights is ReadWriteOnce" in cond["message"]
        assert "h100-dub" in cond["message"]
    else:
        # Observed, with the claim, and found sound: no VolumeNotShared at any point.
        def observed() -> bool:
            found = get(cluster, "inferencefactory", "llama", namespace)
            return bool(found and (found.get("status") or {}).get("observedGeneration") == 1)

        wait_until(observed, 60, what="the factory's first status")
        degraded = condition(get(cluster, "inferencefactory", "llama", namespace), "Degraded")
        assert degraded is not None and degraded["reason"] != "VolumeNotShared"
    # Either way the pool is deployed: the first replica can use the claim.
    assert "llama-h100-dub" in cluster.kubectl("get", "deployments", "-n", namespace, "-o", "name")
