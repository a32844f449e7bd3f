"""Placement on real scheduling: the local fleet's regions label their nodes as GPU feature
discovery, Karpenter, EKS Auto Mode, GKE, a plain GPU-AMI node group (instance type only) and
hybrid nodes (no type label) would. Pools of each accelerator type land on nodes of that type
under each scheme (kube-scheduler decides, from the operator's node-affinity terms); in the
unlabelled region the operator reports that it cannot tell H100 from L4 and places nothing."""

from __future__ import annotations

import json
from typing import Any

from factoryctl.topology import INSTANCE_SHAPES, load_topology
from tests.integration.operator.conftest import RunningOperator, get, wait_condition
from tests.integration.operator.factories import as_json, factory
from tests.support.cluster import KubectlCluster
from tests.support.waiting import wait_until

TOPOLOGY = load_topology()
POOL_LABEL = "inference.factory.dev/node-pool"  # the topology's node pool of a node


def _apply_topology_regions(cluster: KubectlCluster) -> dict[str, str]:
    """FleetRegions of the topology's non-GFD regions, as `factoryctl dev up` writes them;
    region -> scheme of every region of the topology."""
    items = [
        {"apiVersion": "inference.factory.dev/v1alpha1", "kind": "FleetRegion",
         "metadata": {"name": r.name},
         "spec": {"jurisdiction": r.jurisdiction, "nodeLabelScheme": r.scheme}}
        for r in TOPOLOGY.regions if r.nodeLabelScheme
    ]  # fmt: skip
    listed = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    cluster.kubectl("apply", "--server-side", "--field-manager=placement-test", "-f", "-",
                    input=listed)  # fmt: skip
    return {r.name: r.scheme for r in TOPOLOGY.regions}


def _pools() -> list[dict[str, Any]]:
    """One pool per (region, accelerator type) of the topology, for every labelled scheme."""
    pools = []
    for region in TOPOLOGY.regions:
        if region.scheme == "none":
            continue
        for node_pool in region.nodePools:
            shape = INSTANCE_SHAPES[node_pool.instance_type]
            if shape.accelerator_type is None or node_pool.engine != "sim":
                continue  # no accelerator, or tainted for the real engine's sample only
            if region.scheme == "gfd" and region.name != "eu-west-1":
                continue  # one GFD region is enough here; the others have their own tests
            pools.append({
                "name": f"{node_pool.name}-{region.name}",
                "region": region.name,
                "accelerator": {"kind": shape.accelerator_kind, "type": shape.accelerator_type,
                                "count": 1},
                "replicas": {"min": 1, "max": 1},
            })  # fmt: skip
    return pools


def _pods(cluster: KubectlCluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", "pods", "-n", namespace, "-o", "json")
    )["items"]
    return items


def _nodes(cluster: KubectlCluster) -> dict[str, dict[str, str]]:
    items = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    return {n["metadata"]["name"]: n["metadata"]["labels"] for n in items}


def test_pools_land_on_their_accelerator_type_under_every_scheme(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator
) -> None:
    cluster = operator_cluster
    schemes = _apply_topology_regions(cluster)
    pools = _pools()
    assert {schemes[p["region"]] for p in pools} == {
        "gfd", "karpenter", "eks-auto", "gke", "instance-type",
    }  # fmt: skip
    obj = factory("mixed", pools=pools)
    del obj["spec"]["residency"]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(obj))
    wait_condition(cluster, namespace, "mixed", "Ready", "True", timeout=120)

    nodes = _nodes(cluster)
    by_pool = {}
    for pod in _pods(cluster, namespace):
        pool = pod["metadata"]["labels"]["inference.factory.dev/pool"]
        by_pool[pool] = nodes[pod["spec"]["nodeName"]]
    assert set(by_pool) == {p["name"] for p in pools}
    for pool in pools:
        labels = by_pool[pool["name"]]
        node_pool = pool["name"].split("-", 1)[0]
        assert labels["topology.kubernetes.io/region"] == pool["region"], pool["name"]
        # The topology names its node pools after the hardware: h100, l4, inf2, trn1.
        assert labels[POOL_LABEL] == node_pool, (pool["name"], labels[POOL_LABEL])

    # Karpenter-run regions get Karpenter's do-not-disrupt; the Neuron pool asks for the
    # resource Karpenter models there, and for neurondevice where only the device plugin is.
    deployments = {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in json.loads(cluster.kubectl("get", "deployments", "-n", namespace, "-o",
                                            "json"))["items"]
    }  # fmt: skip
    karpenter = deployments["mixed-h100-us-west-2"]
    assert karpenter["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert "annotations" not in deployments["mixed-h100-eu-west-1"]["metadata"]
    limits = {
        name: t["spec"]["containers"][0]["resources"]["limits"] for name, t in deployments.items()
    }
    assert limits["mixed-inf2-us-west-2"] == {"aws.amazon.com/neuron": "1"}
    assert limits["mixed-trn1-eu-north-1"] == {"aws.amazon.com/neurondevice": "1"}


def test_unlabelled_region_reports_it_cannot_tell_h100_from_l4(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator
) -> None:
    cluster = operator_cluster
    _apply_topology_regions(cluster)
    obj = factory("guess", pools=[
        {"name": "h100", "region": "eu-west-2",
         "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
         "replicas": {"min": 1, "max": 1}},
    ])  # fmt: skip
    obj["spec"]["residency"] = {"jurisdictions": ["UK"]}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(obj))
    cond = wait_condition(cluster, namespace, "guess", "Ready", "False", "AcceleratorTypeAmbiguous")
    assert "cannot tell H100 from" in cond["message"] and "L4" in cond["message"]
    assert "spec.nodeLabelScheme" in cond["message"]
    degraded = wait_condition(cluster, namespace, "guess", "Degraded", "True")
    assert degraded["reason"] == "AcceleratorTypeAmbiguous"
    assert cluster.kubectl("get", "deployments", "-n", namespace, "-o", "name") == ""

    # Pinning the pool's nodes is the user's way out: then it is placed.
    obj["spec"]["pools"][0]["nodeSelector"] = {POOL_LABEL: "h100"}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(obj))
    wait_condition(cluster, namespace, "guess", "Ready", "True", timeout=90)
    status = get(cluster, "inferencefactory", "guess", namespace)
    assert status is not None and status["status"]["pools"][0]["readyReplicas"] == 1

    def pod_node() -> str | None:
        pods = _pods(cluster, namespace)
        return pods[0]["spec"].get("nodeName") if pods else None

    node = wait_until(pod_node, 30, what="the pinned pod to be scheduled")
    assert node == "eu-west-2-h100-0"
