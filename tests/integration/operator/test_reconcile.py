"""The operator against the real API server: deploy, roll, scale, remove, delete."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.operator.conftest import RunningOperator, get, wait_condition
from tests.integration.operator.factories import as_json, factory
from tests.support.cluster import KubectlCluster
from tests.support.waiting import wait_until


def _deployments(cluster: KubectlCluster, namespace: str) -> dict[str, dict[str, Any]]:
    out = cluster.kubectl("get", "deployments", "-n", namespace, "-o", "json")
    return {d["metadata"]["name"]: d for d in json.loads(out)["items"]}


def _pods(cluster: KubectlCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def _node_labels(cluster: KubectlCluster, name: str) -> dict[str, str]:
    labels: dict[str, str] = json.loads(cluster.kubectl("get", "node", name, "-o", "json"))[
        "metadata"
    ]["labels"]
    return labels


def _apply(cluster: KubectlCluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(obj))


def test_two_eu_regions_on_h100_and_inf2_become_ready(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator
) -> None:
    cluster = operator_cluster
    _apply(cluster, namespace, factory())
    wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=90)
    deployments = _deployments(cluster, namespace)
    assert set(deployments) == {"llama-h100-dub", "llama-inf2-fra"}
    for pool, region, resource, instance in (
        ("h100-dub", "eu-west-1", "nvidia.com/gpu", "p5.48xlarge"),
        # The local fleet's Neuron nodes offer the device plugin's neurondevice (preferred).
        ("inf2-fra", "eu-central-1", "aws.amazon.com/neurondevice", "inf2.48xlarge"),
    ):
        pods = _pods(cluster, namespace, f"inference.factory.dev/pool={pool}")
        assert pods
        for pod in pods:
            labels = _node_labels(cluster, pod["spec"]["nodeName"])
            assert labels["topology.kubernetes.io/region"] == region
            assert labels["node.kubernetes.io/instance-type"] == instance
            limits = pod["spec"]["containers"][0]["resources"]["limits"]
            assert limits[resource] == "1"
    status = get(cluster, "inferencefactory", "llama", namespace)["status"]  # type: ignore[index]
    pools = {p["name"]: p for p in status["pools"]}
    assert pools["h100-dub"]["readyReplicas"] == 2 and pools["h100-dub"]["desiredReplicas"] == 2
    assert pools["inf2-fra"]["readyReplicas"] == 1
    assert pools["h100-dub"]["jurisdiction"] == "EU"
    assert status["observedGeneration"] == 1
    svc = get(cluster, "service", "llama-h100-dub", namespace)
    assert svc is not None
    assert get(cluster, "poddisruptionbudget", "llama-h100-dub", namespace) is not None
    printed = cluster.kubectl("get", "inferencefactory", "-n", namespace)
    assert "llama-3.1-8b-instruct" in printed and "2/2" in printed


def test_roll_scale_remove_pool_and_delete(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator
) -> None:
    cluster = operator_cluster
    _apply(cluster, namespace, factory())
    wait_condition(cluster, namespace, "llama", "Ready", "True", timeout=90)
    before = _deployments(cluster, namespace)["llama-h100-dub"]
    revision = before["spec"]["template"]["metadata"]["labels"]["inference.factory.dev/revision"]

    # Engine arguments change: the pod template changes, so the Deployment rolls.
    changed = factory()
    changed["spec"]["engine"]["args"]["maxNumSeqs"] = 128
    _apply(cluster, namespace, changed)

    def rolled() -> bool:
        dep = _deployments(cluster, namespace)["llama-h100-dub"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        args = " ".join(dep["spec"]["template"]["spec"]["containers"][0].get("args", []))
        return labels["inference.factory.dev/revision"] != revision and "128" in args

    wait_until(rolled, 60, what="the Deployment to roll to the new revision")

    # Replicas change: it scales.
    changed["spec"]["pools"][0]["replicas"] = {"min": 3, "max": 4}
    _apply(cluster, namespace, changed)
    wait_until(lambda: _deployments(cluster, namespace)["llama-h100-dub"]["spec"]["replicas"] == 3,
               60, what="3 replicas")  # fmt: skip

    # A pool removed from the spec: its children go.
    changed["spec"]["pools"] = changed["spec"]["pools"][:1]
    _apply(cluster, namespace, changed)
    wait_until(lambda: "llama-inf2-fra" not in _deployments(cluster, namespace), 60,
               what="the inf2 pool's Deployment to go")  # fmt: skip
    wait_until(lambda: get(cluster, "service", "llama-inf2-fra", namespace) is None, 30,
               what="the inf2 pool's Service to go")  # fmt: skip

    # The factory deleted: everything it owned goes.
    cluster.kubectl("delete", "inferencefactory", "llama", "-n", namespace, "--timeout=60s")
    wait_until(lambda: not _deployments(cluster, namespace), 60, what="no Deployment left")
    wait_until(lambda: get(cluster, "service", "llama-h100-dub", namespace) is None, 60,
               what="no Service left")  # fmt: skip


def test_kubectl_explain_shows_the_field_documentation(operator_cluster: KubectlCluster) -> None:
    explained = operator_cluster.kubectl("explain", "inferencefactory.spec.pools")
    assert "accelerator" in explained and "replicas" in explained
    assert "<empty>" not in explained.split("FIELDS:")[0]
    fields = operator_cluster.kubectl("explain", "inferencefactory.spec.pools.accelerator")
    assert "nvidia" in fields and "neuron" in fields


def test_region_status_follows_its_nodes(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator
) -> None:
    """A node pool that grows, a node that goes NotReady, a node removed: the FleetRegion's
    status (nodes, ready nodes, accelerator capacity) follows without the region changing."""
    cluster = operator_cluster
    region, node = "zz-test-1", "zz-test-1-gpu-0"
    region_obj = {
        "apiVersion": "inference.factory.dev/v1alpha1",
        "kind": "FleetRegion",
        "metadata": {"name": region},
        "spec": {"jurisdiction": "EU"},
    }
    node_obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": {"topology.kubernetes.io/region": region, "type": "kwok",
                       "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
        "status": {"capacity": {"cpu": "8", "nvidia.com/gpu": "8", "pods": "110"},
                   "allocatable": {"cpu": "8", "nvidia.com/gpu": "8", "pods": "110"}},
    }  # fmt: skip

    def status() -> dict[str, Any]:
        got = get(cluster, "fleetregion", region, "")
        return (got or {}).get("status") or {}

    try:
        cluster.kubectl("apply", "-f", "-", input=as_json(region_obj))
        wait_until(lambda: status().get("nodes") == 0, 30, what="the empty region's status")
        assert status()["conditions"][0]["status"] == "False"

        cluster.kubectl("apply", "-f", "-", input=as_json(node_obj))
        grown = wait_until(
            lambda: (s := status()).get("readyNodes") == 1 and s,
            60,
            what="the region's status to count the new GPU node",
        )
        assert grown["nodes"] == 1 and grown["acceleratorSummary"] == "8 nvidia.com/gpu"
        assert grown["conditions"][0]["status"] == "True"

        cluster.kubectl("cordon", node)  # not schedulable: no usable capacity left
        wait_until(lambda: status().get("readyNodes") == 0, 60, what="the cordoned node")
        assert status()["nodes"] == 1 and status()["accelerators"] == []

        cluster.kubectl("delete", "node", node)
        wait_until(lambda: status().get("nodes") == 0, 60, what="the deleted node")
    finally:
        cluster.kubectl("delete", "node", node, "--ignore-not-found")
        cluster.kubectl("delete", "fleetregion", region, "--ignore-not-found")
