"""Where a pool's pods may run and what they ask the scheduler for (pure).

- The node labels that pin an accelerator type come from the region's ``nodeLabelScheme``
  (else the operator's default): ``api.accelerators.SCHEME_LABELS``. Under ``none`` no label
  tells an H100 node from an L4 node (both offer ``nvidia.com/gpu``), so a pool that does not
  pin its nodes itself (``pool.nodeSelector``) is not placed: guessing would put an 80 GB
  model on a 24 GB GPU.
- The Neuron resource: ``aws.amazon.com/neurondevice`` where the device plugin offers it on
  the pool's nodes, else its alias ``aws.amazon.com/neuron``; always the alias in
  Karpenter-run regions, since Karpenter provisions only for resources it models.
- CPU and memory requests per accelerator type, so that the scheduler does not pack more
  engines on a host than its memory holds (Neuron compiles in host memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from factory_operator.api import Accelerator, FleetRegion, Pool
from factory_operator.api.accelerators import (
    KARPENTER_SCHEMES,
    NEURON_DEVICE_RESOURCE,
    NEURON_LEGACY_RESOURCE,
    RESOURCE_BY_KIND,
    labels_types,
    type_label,
    type_requirement,
)

from .observed import NodeInfo
from .settings import OperatorSettings

ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"

# Requests per accelerator (CPUs, GiB of memory), scaled by accelerator.count. Sized to a
# share of the host that carries them (EC2 instance pages: p5.48xlarge 192 vCPU / 2 TiB per
# 8 H100; g6.xlarge 4 vCPU / 16 GiB per L4; inf2.48xlarge 192 vCPU / 768 GiB per 12 devices;
# trn1.2xlarge 8 vCPU / 32 GiB per device; trn2.48xlarge 192 vCPU / 2 TiB per 16 devices), so
# that the smallest instance of the type still fits one replica, except inf2.xlarge (16 GiB),
# too small to compile an 8B model. Neuron needs more: the model is compiled in host memory.
# pool.resources.requests overrides key by key.
REQUESTS_PER_ACCELERATOR: dict[str, tuple[int, int]] = {
    "B200": (8, 96), "GB200": (8, 96), "H200": (8, 96), "H100": (8, 64), "H20": (8, 64),
    "A100": (6, 48), "V100": (6, 40), "L40S": (4, 32), "L40": (4, 32), "RTX6000": (4, 32),
    "A10G": (3, 12), "A10": (3, 12), "L4": (3, 12), "T4": (3, 12),
    "inf2": (8, 48), "trn1": (6, 24), "trn1n": (6, 24), "trn2": (10, 96),
}  # fmt: skip
DEFAULT_REQUESTS_PER_ACCELERATOR = (4, 16)


@dataclass(frozen=True)
class Placement:
    """How one pool is placed: the scheme in force, the resource and the type term."""

    scheme: str
    resource: str
    requirement: tuple[str, tuple[str, ...]] | None

    @property
    def karpenter(self) -> bool:
        """Karpenter (self-managed or EKS Auto Mode) provisions this region's nodes."""
        return self.scheme in KARPENTER_SCHEMES


def region_scheme(region: FleetRegion, settings: OperatorSettings) -> str:
    """The region's nodeLabelScheme, else the operator's default."""
    return region.spec.node_label_scheme or settings.node_label_scheme


def _matches(node: NodeInfo, selector: Mapping[str, str]) -> bool:
    return all(node.labels.get(k) == v for k, v in selector.items())


def candidate_nodes(
    nodes: Sequence[NodeInfo],
    selector: Mapping[str, str],
    requirement: tuple[str, tuple[str, ...]] | None,
) -> list[NodeInfo]:
    """Nodes the pool's selector and type term admit (ready or not)."""
    return [
        n
        for n in nodes
        if _matches(n, selector)
        and (requirement is None or n.labels.get(requirement[0]) in requirement[1])
    ]


def ambiguity(pool: Pool, region: FleetRegion, scheme: str) -> str | None:
    """Why the pool's accelerator type cannot be told apart in this region, or None."""
    if pool.node_selector:
        return None  # the user pinned the nodes
    acc = pool.accelerator
    if labels_types(scheme):
        if acc.kind != "nvidia" or type_requirement(scheme, acc.kind, acc.type) is not None:
            return None
        # GPU types the scheme has no label value for (an A10 under Karpenter: EC2 has none;
        # an A10G under GKE): any GPU node would do for the scheduler, so do not place.
        key = type_label(scheme, acc.kind)
        return (
            f"cannot tell {acc.type} nodes in region {region.name}: its nodeLabelScheme "
            f"{scheme} has no known value of {key} for {acc.type}; pin the pool's nodes "
            f"with pool.nodeSelector (e.g. {key}: <the value your {acc.type} nodes carry>)"
        )
    # The types the region prices are the ones it has; else the common ones of the kind.
    named = {*(region.spec.pricing or {}), *(region.spec.power or {})}
    same_kind = sorted(t for t in named if t != acc.type and _kind_of(t) == acc.kind)
    if same_kind:
        others = ", ".join(same_kind)
    else:
        common = [t for t in _COMMON[acc.kind] if t != acc.type]
        others = f"{', '.join(common)} or other {acc.kind} types"
    resource = RESOURCE_BY_KIND[acc.kind]
    return (
        f"cannot tell {acc.type} from {others} in region {region.name}: its "
        f"nodeLabelScheme is none, so no node label names the accelerator type (they all "
        f"offer {resource}); not placed rather than guessed. Set the FleetRegion's "
        f"spec.nodeLabelScheme to the labels its nodes carry (gfd, karpenter, eks-auto, gke, "
        f"instance-type), or pin the pool's nodes with pool.nodeSelector"
    )


_COMMON = {"nvidia": ("H100", "L4", "A10G"), "neuron": ("inf2", "trn1", "trn2")}


def _kind_of(accelerator_type: str) -> str:
    return "neuron" if accelerator_type.startswith(("inf", "trn")) else "nvidia"


def place(
    pool: Pool, scheme: str, selector: Mapping[str, str], nodes: Sequence[NodeInfo]
) -> Placement:
    """The scheme, resource and node-affinity term of one pool."""
    acc = pool.accelerator
    requirement = type_requirement(scheme, acc.kind, acc.type)
    resource = RESOURCE_BY_KIND[acc.kind]
    if acc.kind == "neuron" and scheme not in KARPENTER_SCHEMES:
        wanted = {**selector, **(pool.node_selector or {})}
        if any(
            n.allocatable.get(NEURON_DEVICE_RESOURCE, 0) > 0
            for n in candidate_nodes(nodes, wanted, requirement)
        ):
            resource = NEURON_DEVICE_RESOURCE
        else:
            resource = NEURON_LEGACY_RESOURCE
    return Placement(scheme, resource, requirement)


def default_requests(accelerator: Accelerator) -> dict[str, str]:
    """CPU and memory requests for one replica of this accelerator type and count."""
    cpu, memory = REQUESTS_PER_ACCELERATOR.get(accelerator.type, DEFAULT_REQUESTS_PER_ACCELERATOR)
    return {"cpu": str(cpu * accelerator.count), "memory": f"{memory * accelerator.count}Gi"}


def topology_spread(selector: Mapping[str, str]) -> list[dict[str, Any]]:
    """Spread replicas over zones, then nodes, without ever leaving one unscheduled for it:
    ScheduleAnyway, because accelerators are scarce and often in one zone only. Only pods of
    the same ReplicaSet count (matchLabelKeys), so a rollout's new pods are not pushed away
    by the old ones they replace."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(selector)},
            "matchLabelKeys": ["pod-template-hash"],
        }
        for key in (ZONE_LABEL, HOSTNAME_LABEL)
    ]
