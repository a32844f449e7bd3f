"""Builders for factories, regions and observed worlds used by the operator unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from factory_operator.api import FleetRegion, InferenceFactory
from factory_operator.plan import NodeInfo, Observed, OperatorSettings

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def region(name: str, jurisdiction: str) -> FleetRegion:
    return FleetRegion.model_validate(
        {
            "apiVersion": "inference.factory.dev/v1alpha1",
            "kind": "FleetRegion",
            "metadata": {"name": name, "generation": 1},
            "spec": {"jurisdiction": jurisdiction},
        }
    )


REGIONS = {
    r.name: r
    for r in (
        region("eu-west-1", "EU"),
        region("eu-central-1", "EU"),
        region("us-east-1", "US"),
        region("ap-south-1", "IN"),
    )
}


def factory(
    pools: list[dict[str, Any]],
    *,
    residency: list[str] | None = None,
    engine: dict[str, Any] | None = None,
    uri: str = "hf://meta-llama/Llama-3.1-8B-Instruct",
    status: dict[str, Any] | None = None,
    **model: Any,
) -> InferenceFactory:
    spec: dict[str, Any] = {"model": {"name": "llama-3.1-8b", "uri": uri, **model}, "pools": pools}
    if residency is not None:
        spec["residency"] = {"jurisdictions": residency}
    if engine is not None:
        spec["engine"] = engine
    body: dict[str, Any] = {
        "apiVersion": "inference.factory.dev/v1alpha1",
        "kind": "InferenceFactory",
        "metadata": {"name": "llama", "namespace": "ml", "uid": "u-1", "generation": 3},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return InferenceFactory.model_validate(body)


def pool(
    name: str,
    region_name: str,
    kind: str = "nvidia",
    type_: str = "H100",
    count: int = 1,
    replicas: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "region": region_name,
        "accelerator": {"kind": kind, "type": type_, "count": count},
        "replicas": {"min": replicas, "max": max(replicas, 1)},
        **extra,
    }


def gpu_node(
    name: str, region_name: str, resource: str = "nvidia.com/gpu", count: int = 8
) -> NodeInfo:
    """An H100 node (p5.48xlarge), or an inf2.48xlarge when the resource is Neuron's."""
    hardware = (
        {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        if resource == "nvidia.com/gpu"
        else {"node.kubernetes.io/instance-type": "inf2.48xlarge"}
    )
    labels = {"topology.kubernetes.io/region": region_name, **hardware}
    return NodeInfo(name, labels, {resource: count})


NODES = [
    gpu_node("h100-a", "eu-west-1"),
    gpu_node("h100-b", "eu-central-1"),
    gpu_node("inf2-a", "eu-west-1", "aws.amazon.com/neuron", 12),
    gpu_node("h100-c", "us-east-1"),
    gpu_node("h100-d", "ap-south-1"),
]


@pytest.fixture
def settings() -> OperatorSettings:
    return OperatorSettings()


@pytest.fixture
def world() -> Observed:
    return Observed(now=NOW, nodes=NODES)
