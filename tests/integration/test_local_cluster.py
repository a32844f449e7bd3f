"""The local control plane: real API server, scheduler and kwok nodes with accelerators."""

from __future__ import annotations

import json

from factoryctl.toolchain import KUBERNETES_VERSION
from tests.support.cluster import KubectlCluster
from tests.support.waiting import wait_until


def _deployment(
    name: str,
    resource: str,
    selector: dict[str, str],
    tolerate: bool,
    count: int = 1,
    replicas: int = 1,
) -> str:
    pod_spec: dict[str, object] = {
        "nodeSelector": selector,
        "containers": [
            {
                "name": "engine",
                "image": "vllm/vllm-openai:v0.12.0",
                "resources": {"limits": {resource: str(count)}, "requests": {resource: str(count)}},
            }
        ],
    }
    if tolerate:
        pod_spec["tolerations"] = [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}]
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
            },
        }
    )


def _pods(cluster: KubectlCluster, namespace: str, app: str) -> list[dict[str, object]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o", "json")
    items: list[dict[str, object]] = json.loads(out)["items"]
    return items


def _ready(pod: dict[str, object]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])  # type: ignore[attr-defined]
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _all_ready(pods: list[dict[str, object]], count: int) -> list[dict[str, object]]:
    return pods if len(pods) == count and all(map(_ready, pods)) else []


def _node(cluster: KubectlCluster, name: str) -> dict[str, object]:
    node: dict[str, object] = json.loads(cluster.kubectl("get", "node", name, "-o", "json"))
    return node


def _events(cluster: KubectlCluster, namespace: str, reason: str) -> list[str]:
    out = cluster.kubectl(
        "get", "events", "-n", namespace, f"--field-selector=reason={reason}", "-o", "json"
    )
    return [e["message"] for e in json.loads(out)["items"]]


def test_server_reports_the_pinned_version(cluster: KubectlCluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == f"v{KUBERNETES_VERSION}"
    assert version["clientVersion"]["gitVersion"] == f"v{KUBERNETES_VERSION}"


def test_nodes_carry_regions_accelerators_and_taints(cluster: KubectlCluster) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    regions = {n["metadata"]["labels"]["topology.kubernetes.io/region"] for n in nodes}
    assert {"eu-west-1", "eu-central-1", "us-east-1", "ap-south-1"} <= regions
    h100 = [
        n
        for n in nodes
        if n["metadata"]["labels"].get("nvidia.com/gpu.product") == "NVIDIA-H100-80GB-HBM3"
    ]
    assert h100 and all(n["status"]["allocatable"]["nvidia.com/gpu"] == "8" for n in h100)
    assert all(t["key"] == "nvidia.com/gpu" for n in h100 for t in n["spec"]["taints"])
    inf2 = [
        n
        for n in nodes
        if n["metadata"]["labels"].get("node.kubernetes.io/instance-type") == "inf2.48xlarge"
    ]
    assert inf2 and all(n["status"]["allocatable"]["aws.amazon.com/neuron"] == "12" for n in inf2)
    assert all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
        for n in nodes
    )


def _lands_on(
    cluster: KubectlCluster,
    namespace: str,
    name: str,
    resource: str,
    region: str,
    instance_type: str,
    selector: dict[str, str],
) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=_deployment(
            name, resource, {"topology.kubernetes.io/region": region, **selector}, tolerate=True
        ),
    )
    pods = wait_until(
        lambda: [p for p in _pods(cluster, namespace, name) if _ready(p)],
        60,
        what=f"a Ready {name} pod",
    )
    node = _node(cluster, pods[0]["spec"]["nodeName"])  # type: ignore[index]
    labels = node["metadata"]["labels"]  # type: ignore[index]
    assert labels["topology.kubernetes.io/region"] == region
    assert labels["node.kubernetes.io/instance-type"] == instance_type


def test_gpu_deployment_lands_on_a_gpu_node_of_its_region(
    cluster: KubectlCluster, namespace: str
) -> None:
    # The resource alone does not pick H100 over L4: GPU feature discovery's product label does.
    _lands_on(
        cluster,
        namespace,
        "gpu",
        "nvidia.com/gpu",
        "eu-west-1",
        "p5.48xlarge",
        {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    )


def test_neuron_deployment_lands_on_a_neuron_node_of_its_region(
    cluster: KubectlCluster, namespace: str
) -> None:
    _lands_on(
        cluster,
        namespace,
        "neuron",
        "aws.amazon.com/neuron",
        "eu-central-1",
        "inf2.48xlarge",
        {"node.kubernetes.io/instance-type": "inf2.48xlarge"},
    )


def test_too_many_accelerators_stay_pending_naming_the_resource(
    cluster: KubectlCluster, namespace: str
) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=_deployment(
            "huge",
            "nvidia.com/gpu",
            {"topology.kubernetes.io/region": "us-east-1"},
            tolerate=True,
            count=16,
        ),
    )
    messages = wait_until(
        lambda: _events(cluster, namespace, "FailedScheduling"), 60, what="a FailedScheduling event"
    )
    assert any("Insufficient nvidia.com/gpu" in m for m in messages), messages
    assert all(
        p["status"]["phase"] == "Pending"  # type: ignore[index]
        for p in _pods(cluster, namespace, "huge")
    )


def test_without_toleration_no_pod_lands_on_a_tainted_node(
    cluster: KubectlCluster, namespace: str
) -> None:
    # Selecting the GPU pool without tolerating its taint: unschedulable, and says why.
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=_deployment(
            "untolerated", "cpu", {"inference.factory.dev/node-pool": "h100"}, tolerate=False
        ),
    )
    messages = wait_until(
        lambda: _events(cluster, namespace, "FailedScheduling"), 60, what="a FailedScheduling event"
    )
    assert any("untolerated taint" in m for m in messages), messages
    # With no selector at all, many replicas land only on untainted (CPU) nodes.
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=_deployment("anywhere", "cpu", {}, tolerate=False, replicas=8),
    )
    pods = wait_until(
        lambda: _all_ready(_pods(cluster, namespace, "anywhere"), 8),
        60,
        what="8 Ready pods",
    )
    for pod in pods:
        node = _node(cluster, pod["spec"]["nodeName"])  # type: ignore[index]
        assert not node["spec"].get("taints"), node["metadata"]["name"]  # type: ignore[index]
