"""The topology file and the Nodes made from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from factoryctl.errors import TopologyError
from factoryctl.topology import load_topology, node_manifests


def test_default_topology_has_four_regions_three_jurisdictions() -> None:
    topology = load_topology()
    assert len(topology.regions) >= 4
    assert len({r.jurisdiction for r in topology.regions}) >= 3


def test_rtt_is_symmetric_and_small_within_a_region() -> None:
    topology = load_topology()
    assert topology.rtt_ms("eu-west-1", "us-east-1") == topology.rtt_ms("us-east-1", "eu-west-1")
    assert topology.rtt_ms("eu-west-1", "eu-west-1") < topology.rtt_ms("eu-west-1", "eu-central-1")
    assert topology.rtt_table("ap-south-1")["us-east-1"] == 190


def test_nodes_have_capacity_labels_and_taints() -> None:
    nodes = {n["metadata"]["name"]: n for n in node_manifests(load_topology())}
    h100 = nodes["eu-west-1-h100-0"]
    assert h100["status"]["capacity"]["nvidia.com/gpu"] == "8"
    assert h100["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert h100["metadata"]["labels"]["topology.kubernetes.io/zone"] == "eu-west-1a"
    assert h100["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "effect": "NoSchedule", "value": "true"}
    ]
    trn1 = nodes["us-east-1-trn1-1"]
    assert trn1["status"]["capacity"]["aws.amazon.com/neuron"] == "16"
    assert trn1["status"]["capacity"]["aws.amazon.com/neuroncore"] == "32"
    assert trn1["metadata"]["labels"]["topology.kubernetes.io/zone"] == "us-east-1b"
    assert trn1["spec"]["taints"] == [{"key": "aws.amazon.com/neuron", "effect": "NoSchedule"}]
    assert "taints" not in nodes["ap-south-1-cpu-0"]["spec"]
    assert all(n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake" for n in nodes.values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("regions: []", "regions"),
        (
            "regions: [{name: x, jurisdiction: EU, zones: [a], nodePools: "
            "[{name: a, instanceType: z9.huge, count: 1}]}]",
            "unknown instance type",
        ),
        (
            "regions: [{name: x, jurisdiction: EU, zones: [a], nodePools: []}, "
            "{name: y, jurisdiction: US, zones: [b], nodePools: []}]",
            "no round trip",
        ),
        ("regions: [{name: x, jurisdiction: eu, zones: [a], nodePools: []}]", "jurisdiction"),
    ],
)
def test_invalid_topology_is_refused_with_a_clear_message(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError, match=message):
        load_topology(path)


def test_regions_label_their_nodes_as_their_provisioner_would() -> None:
    nodes = {
        n["metadata"]["name"]: n["metadata"]["labels"] for n in node_manifests(load_topology())
    }
    karpenter = nodes["us-west-2-h100-0"]
    assert karpenter["karpenter.k8s.aws/instance-gpu-name"] == "h100"
    assert nodes["us-west-2-l4-0"]["karpenter.k8s.aws/instance-gpu-name"] == "l4"
    assert nodes["us-west-2-inf2-0"]["karpenter.k8s.aws/instance-family"] == "inf2"
    assert nodes["us-east-2-l4-0"]["eks.amazonaws.com/instance-gpu-name"] == "l4"
    assert nodes["europe-west4-h100-0"]["cloud.google.com/gke-accelerator"] == "nvidia-h100-80gb"
    assert nodes["europe-west4-h100-0"]["node.kubernetes.io/instance-type"] == "a3-highgpu-8g"
    assert nodes["eu-north-1-l4-0"]["node.kubernetes.io/instance-type"] == "g6.12xlarge"
    # Only GFD sets nvidia.com/gpu.*: none of the other schemes' nodes carry it.
    for name, labels in nodes.items():
        if not name.startswith(("eu-west-1", "eu-central-1", "us-east-1-", "ap-south-1")):
            assert not any(k.startswith("nvidia.com/gpu.") for k in labels), name
    bare = nodes["eu-west-2-h100-0"]
    assert "node.kubernetes.io/instance-type" not in bare
    assert not any(k.startswith(("karpenter.", "eks.", "cloud.google.com/")) for k in bare)


def test_a_scheme_the_instance_type_cannot_express_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(
        "regions: [{name: x, jurisdiction: EU, nodeLabelScheme: gke, zones: [a], nodePools: "
        "[{name: a, instanceType: p5.48xlarge, count: 1}]}]"
    )
    with pytest.raises(TopologyError, match="GKE accelerator name"):
        load_topology(path)
