"""The local fleet's nodes, labelled per provisioner in cli/factoryctl/topology.py from each
provider's documentation, against the operator's placement tables: in every region a pool of
each accelerator type the region has admits exactly the nodes of that type, or (scheme none)
is refused with a condition."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import NOW, factory, pool

from factory_operator.api import FleetRegion
from factory_operator.plan import NodeInfo, Observed, OperatorSettings, plan_factory
from factory_operator.plan.placement import candidate_nodes
from factoryctl.topology import INSTANCE_SHAPES, load_topology, node_manifests

TOPOLOGY = load_topology()
NODES = node_manifests(TOPOLOGY)


def _node_info(node: dict[str, Any]) -> NodeInfo:
    allocatable = {k: int(v) for k, v in node["status"]["allocatable"].items() if "/" in k}
    return NodeInfo(node["metadata"]["name"], node["metadata"]["labels"], allocatable)


def _type_of(node: dict[str, Any]) -> str | None:
    return INSTANCE_SHAPES[_instance_type(node)].accelerator_type


def _instance_type(node: dict[str, Any]) -> str:
    region = next(r for r in TOPOLOGY.regions if r.name == node["metadata"]["labels"][
        "topology.kubernetes.io/region"])  # fmt: skip
    pool_name = node["metadata"]["labels"]["inference.factory.dev/node-pool"]
    return next(p.instance_type for p in region.nodePools if p.name == pool_name)


CASES = sorted(
    {
        (r.name, r.scheme, INSTANCE_SHAPES[p.instance_type].accelerator_kind or "",
         INSTANCE_SHAPES[p.instance_type].accelerator_type or "")
        for r in TOPOLOGY.regions for p in r.nodePools
        if INSTANCE_SHAPES[p.instance_type].accelerator_type
    }
)  # fmt: skip


def test_every_scheme_is_in_the_local_fleet() -> None:
    assert {r.scheme for r in TOPOLOGY.regions} == {
        "gfd", "karpenter", "eks-auto", "gke", "instance-type", "none",
    }  # fmt: skip
    # Every labelled scheme has a region with both an H100 and an L4 pool to tell apart.
    for scheme in ("gfd", "karpenter", "eks-auto", "gke", "instance-type", "none"):
        types = {c[3] for c in CASES if c[1] == scheme}
        assert {"H100", "L4"} <= types, scheme


@pytest.mark.parametrize(("region", "scheme", "kind", "type_"), CASES)
def test_pool_admits_exactly_the_nodes_of_its_type(
    region: str, scheme: str, kind: str, type_: str
) -> None:
    fleet_region = FleetRegion.model_validate(
        {"metadata": {"name": region}, "spec": {"jurisdiction": "EU", "nodeLabelScheme": scheme}}
    )
    nodes = [_node_info(n) for n in NODES]
    plan = plan_factory(
        factory([pool("p", region, kind, type_)]),
        {region: fleet_region},
        Observed(now=NOW, nodes=nodes),
        OperatorSettings(),
    )
    if scheme == "none":
        assert plan.apply == []
        assert plan.status.pools[0].reason == "AcceleratorTypeAmbiguous"
        return
    dep = next(c for c in plan.apply if c["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expr = terms["nodeSelectorTerms"][0]["matchExpressions"][0]
    admitted = {
        n.name
        for n in candidate_nodes(nodes, spec["nodeSelector"], (expr["key"], tuple(expr["values"])))
    }
    expected = {
        n["metadata"]["name"]
        for n in NODES
        if n["metadata"]["labels"]["topology.kubernetes.io/region"] == region
        and _type_of(n) == type_
    }
    assert admitted == expected
    assert plan.status.pools[0].reason is None  # capacity found: not InsufficientAccelerators
