"""Placement per node-labelling scheme: the type term, the ambiguous case, the Neuron resource,
region capacity by product, requests per accelerator type."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import NOW, factory, pool

from factory_operator.api import FleetRegion
from factory_operator.plan import NodeInfo, Observed, OperatorSettings, plan_factory
from factory_operator.plan.region import plan_region_status

REGION_LABEL = "topology.kubernetes.io/region"


def scheme_region(name: str, scheme: str | None, **spec: Any) -> FleetRegion:
    body: dict[str, Any] = {"jurisdiction": "US", **spec}
    if scheme is not None:
        body["nodeLabelScheme"] = scheme
    return FleetRegion.model_validate({"metadata": {"name": name, "generation": 1}, "spec": body})


def node(name: str, region: str, labels: dict[str, str], **allocatable: int) -> NodeInfo:
    resources = {k.replace("__", "/").replace("_", "."): v for k, v in allocatable.items()}
    return NodeInfo(name, {REGION_LABEL: region, **labels}, resources)


def _plan(pools: list[dict[str, Any]], region: FleetRegion, nodes: list[NodeInfo],
          settings: OperatorSettings | None = None, **kw: Any) -> Any:  # fmt: skip
    f = factory(pools, **kw)
    return plan_factory(
        f, {region.name: region}, Observed(now=NOW, nodes=nodes), settings or OperatorSettings()
    )


def _deployment(plan: Any, name: str) -> dict[str, Any]:
    return next(
        c for c in plan.apply if c["kind"] == "Deployment" and c["metadata"]["name"] == name
    )


def _term(dep: dict[str, Any]) -> dict[str, Any]:
    affinity = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 1 and len(terms[0]["matchExpressions"]) == 1
    return terms[0]["matchExpressions"][0]  # type: ignore[no-any-return]


# (scheme, accelerator type, label key, values that must be accepted, values refused)
TYPE_TERMS = [
    ("gfd", "H100", "nvidia.com/gpu.product", ["NVIDIA-H100-80GB-HBM3"], ["NVIDIA-L4"]),
    ("gfd", "L4", "nvidia.com/gpu.product", ["NVIDIA-L4"], ["NVIDIA-H100-80GB-HBM3"]),
    ("karpenter", "H100", "karpenter.k8s.aws/instance-gpu-name", ["h100"], ["l4", "H100"]),
    ("karpenter", "L4", "karpenter.k8s.aws/instance-gpu-name", ["l4"], ["h100", "l40s"]),
    ("eks-auto", "H100", "eks.amazonaws.com/instance-gpu-name", ["h100"], ["l4"]),
    ("eks-auto", "L4", "eks.amazonaws.com/instance-gpu-name", ["l4"], ["h100"]),
    ("gke", "H100", "cloud.google.com/gke-accelerator",
     ["nvidia-h100-80gb", "nvidia-h100-mega-80gb"], ["nvidia-l4"]),
    ("gke", "L4", "cloud.google.com/gke-accelerator", ["nvidia-l4"], ["nvidia-h100-80gb"]),
    ("instance-type", "H100", "node.kubernetes.io/instance-type", ["p5.48xlarge"],
     ["g6.12xlarge", "p4d.24xlarge"]),
    ("instance-type", "L4", "node.kubernetes.io/instance-type",
     ["g6.xlarge", "g6.12xlarge", "gr6.4xlarge"], ["g6e.12xlarge", "p5.48xlarge"]),
]  # fmt: skip


@pytest.mark.parametrize(("scheme", "type_", "key", "accepted", "refused"), TYPE_TERMS)
def test_nvidia_type_term_follows_the_region_scheme(
    scheme: str, type_: str, key: str, accepted: list[str], refused: list[str]
) -> None:
    region = scheme_region("r", scheme)
    plan = _plan([pool("p", "r", type_=type_)], region, [])
    term = _term(_deployment(plan, "llama-p"))
    assert term["key"] == key and term["operator"] == "In"
    assert set(accepted) <= set(term["values"])
    assert not set(refused) & set(term["values"])


@pytest.mark.parametrize(
    ("scheme", "key", "value"),
    [
        ("gfd", "node.kubernetes.io/instance-type", "inf2.48xlarge"),
        ("karpenter", "karpenter.k8s.aws/instance-family", "inf2"),
        ("eks-auto", "eks.amazonaws.com/instance-family", "inf2"),
        ("instance-type", "node.kubernetes.io/instance-type", "inf2.xlarge"),
    ],
)
def test_neuron_type_term_follows_the_region_scheme(scheme: str, key: str, value: str) -> None:
    plan = _plan([pool("p", "r", "neuron", "inf2")], scheme_region("r", scheme), [])
    term = _term(_deployment(plan, "llama-p"))
    assert term["key"] == key and value in term["values"]
    assert not any(v.startswith("trn") for v in term["values"])


def test_region_without_scheme_uses_the_operator_default() -> None:
    region = scheme_region("r", None)
    default = _term(_deployment(_plan([pool("p", "r")], region, []), "llama-p"))
    assert default["key"] == "nvidia.com/gpu.product"
    settings = OperatorSettings(node_label_scheme="karpenter")
    chosen = _term(_deployment(_plan([pool("p", "r")], region, [], settings), "llama-p"))
    assert chosen["key"] == "karpenter.k8s.aws/instance-gpu-name"


def test_unlabelled_region_reports_ambiguity_instead_of_guessing() -> None:
    region = scheme_region("r", "none", pricing={"H100": 6.9, "L4": 0.9, "inf2": 1.1})
    nodes = [node("h", "r", {}, nvidia_com__gpu=8), node("l", "r", {}, nvidia_com__gpu=4)]
    plan = _plan([pool("h100", "r"), pool("inf2", "r", "neuron", "inf2")], region, nodes)
    assert plan.apply == []
    states = {p.name: (p.state, p.reason) for p in plan.status.pools}
    assert states == {
        "h100": ("Blocked", "AcceleratorTypeAmbiguous"),
        "inf2": ("Blocked", "AcceleratorTypeAmbiguous"),
    }
    ready = next(c for c in plan.status.conditions if c.type == "Ready")
    assert ready.status == "False" and ready.reason == "AcceleratorTypeAmbiguous"
    assert "cannot tell H100 from L4" in ready.message
    assert "cannot tell inf2 from trn1, trn2 or other neuron types" in ready.message
    unpriced = _plan([pool("h100", "r")], scheme_region("r", "none"), nodes)
    message = next(c for c in unpriced.status.conditions if c.type == "Ready").message
    assert "cannot tell H100 from L4, A10G or other nvidia types" in message
    assert "spec.nodeLabelScheme" in ready.message and "pool.nodeSelector" in ready.message
    assert plan.permanent_error is None  # depends on the region: re-evaluated, not parked


def test_unlabelled_region_places_a_pool_that_pins_its_own_nodes() -> None:
    region = scheme_region("r", "none")
    pinned = pool("p", "r", nodeSelector={"example.com/gpu": "h100"})
    dep = _deployment(_plan([pinned], region, []), "llama-p")
    spec = dep["spec"]["template"]["spec"]
    assert spec["nodeSelector"]["example.com/gpu"] == "h100"
    assert "affinity" not in spec


def test_unlabelled_region_stops_a_running_pool_with_an_event() -> None:
    from factory_operator.plan import ChildRef  # noqa: PLC0415

    region = scheme_region("r", "none")
    f = factory([pool("p", "r")])
    child = ChildRef("apps/v1", "Deployment", "llama-p", "p")
    plan = plan_factory(f, {"r": region}, Observed(now=NOW, children=[child]), OperatorSettings())
    assert plan.delete == [child]
    assert [e.reason for e in plan.events] == ["PoolStopped"]


def test_neuron_resource_prefers_neurondevice_where_offered() -> None:
    both = node("a", "r", {"node.kubernetes.io/instance-type": "inf2.48xlarge"},
                aws_amazon_com__neuron=12, aws_amazon_com__neurondevice=12)  # fmt: skip
    legacy = node("b", "r", {"node.kubernetes.io/instance-type": "inf2.48xlarge"},
                  aws_amazon_com__neuron=12)  # fmt: skip

    def limits(scheme: str, nodes: list[NodeInfo]) -> dict[str, str]:
        plan = _plan([pool("p", "r", "neuron", "inf2")], scheme_region("r", scheme), nodes)
        dep = _deployment(plan, "llama-p")
        return dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]  # type: ignore[no-any-return]

    assert limits("gfd", [both]) == {"aws.amazon.com/neurondevice": "1"}
    assert limits("gfd", [legacy]) == {"aws.amazon.com/neuron": "1"}
    assert limits("gfd", []) == {"aws.amazon.com/neuron": "1"}
    # Karpenter provisions only for resources it models: aws.amazon.com/neuron.
    karpenter = node("c", "r", {"karpenter.k8s.aws/instance-family": "inf2"},
                     aws_amazon_com__neuron=12, aws_amazon_com__neurondevice=12)  # fmt: skip
    assert limits("karpenter", [karpenter]) == {"aws.amazon.com/neuron": "1"}


def test_capacity_gap_counts_only_nodes_of_the_type_under_the_scheme() -> None:
    region = scheme_region("r", "karpenter")
    l4 = node("l4", "r", {"karpenter.k8s.aws/instance-gpu-name": "l4"}, nvidia_com__gpu=4)
    plan = _plan([pool("p", "r", type_="H100")], region, [l4])
    status = plan.status.pools[0]
    assert status.state == "Degraded" and status.reason == "InsufficientAccelerators"
    h100 = node("h", "r", {"karpenter.k8s.aws/instance-gpu-name": "h100"}, nvidia_com__gpu=8)
    assert _plan([pool("p", "r", type_="H100")], region, [l4, h100]).status.pools[0].reason is None


def test_region_status_products_follow_the_scheme_and_count_neuron_once() -> None:
    region = scheme_region("r", "karpenter")
    nodes = [
        node("h", "r", {"karpenter.k8s.aws/instance-gpu-name": "h100"}, nvidia_com__gpu=8),
        node("i", "r", {"karpenter.k8s.aws/instance-family": "inf2"},
             aws_amazon_com__neuron=12, aws_amazon_com__neurondevice=12),
    ]  # fmt: skip
    status = plan_region_status(region, nodes, NOW)
    products = {(c.resource, c.product): c.allocatable for c in status.accelerators}
    assert products == {("nvidia.com/gpu", "h100"): 8, ("aws.amazon.com/neurondevice", "inf2"): 12}
    assert status.accelerator_summary == "12 aws.amazon.com/neurondevice, 8 nvidia.com/gpu"
    unlabelled = plan_region_status(scheme_region("r", "none"), nodes, NOW)
    assert {c.product for c in unlabelled.accelerators} == {None}


@pytest.mark.parametrize(
    ("kind", "type_", "count", "cpu", "memory"),
    [
        ("nvidia", "H100", 2, "16", "128Gi"),
        ("nvidia", "L4", 1, "3", "12Gi"),
        ("neuron", "inf2", 1, "8", "48Gi"),
        ("neuron", "trn1", 4, "24", "96Gi"),
    ],
)
def test_requests_per_accelerator_type(
    kind: str, type_: str, count: int, cpu: str, memory: str
) -> None:
    plan = _plan([pool("p", "r", kind, type_, count=count)], scheme_region("r", "gfd"), [])
    requests = _deployment(plan, "llama-p")["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ]["requests"]
    assert requests["cpu"] == cpu and requests["memory"] == memory


def test_pool_resources_override_the_defaults_key_by_key() -> None:
    extra = {"requests": {"memory": "200Gi", "ephemeral-storage": "100Gi"},
             "limits": {"memory": "220Gi"}}  # fmt: skip
    plan = _plan([pool("p", "r", resources=extra)], scheme_region("r", "gfd"), [])
    resources = _deployment(plan, "llama-p")["spec"]["template"]["spec"]["containers"][0][
        "resources"
    ]
    assert resources["requests"] == {
        "cpu": "8",
        "memory": "200Gi",
        "ephemeral-storage": "100Gi",
        "nvidia.com/gpu": "1",
    }
    assert resources["limits"] == {"memory": "220Gi", "nvidia.com/gpu": "1"}


@pytest.mark.parametrize(
    ("scheme", "type_"), [("karpenter", "A10"), ("gke", "A10G"), ("instance-type", "L40")]
)
def test_gpu_type_the_scheme_cannot_name_is_not_placed(scheme: str, type_: str) -> None:
    plan = _plan([pool("p", "r", type_=type_)], scheme_region("r", scheme), [])
    assert plan.apply == []
    ready = next(c for c in plan.status.conditions if c.type == "Ready")
    assert ready.reason == "AcceleratorTypeAmbiguous"
    assert f"nodeLabelScheme {scheme} has no known value" in ready.message
    assert "pool.nodeSelector" in ready.message
    pinned = pool("p", "r", type_=type_, nodeSelector={"example.com/gpu": type_.lower()})
    assert _deployment(_plan([pinned], scheme_region("r", scheme), []), "llama-p")
