"""FleetRegion status from the nodes it selects (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from factory_operator.api import FleetRegion, FleetRegionStatus
from factory_operator.api.accelerators import (
    NEURON_DEVICE_RESOURCE,
    NEURON_LEGACY_RESOURCE,
    type_label,
)
from factory_operator.api.region import AcceleratorCapacity

from .observed import NodeInfo
from .status import condition

# One resource per kind and node: the Neuron device plugin advertises the same devices under
# neurondevice and its alias neuron, which must not be counted twice.
_KINDS = (
    ("nvidia", ("nvidia.com/gpu",)),
    ("neuron", (NEURON_DEVICE_RESOURCE, NEURON_LEGACY_RESOURCE)),
)


def plan_region_status(
    region: FleetRegion, nodes: Sequence[NodeInfo], now: str, default_scheme: str = "gfd"
) -> FleetRegionStatus:
    """Nodes, ready nodes and accelerator capacity of one region; the product is the value
    of the label that names the accelerator type under the region's nodeLabelScheme."""
    scheme = region.spec.node_label_scheme or default_scheme
    selector = region.spec.selector(region.name)
    mine = [n for n in nodes if all(n.labels.get(k) == v for k, v in selector.items())]
    usable = [n for n in mine if n.ready and n.schedulable]
    groups: dict[tuple[str, str | None], list[int]] = {}
    for node in usable:
        for kind, resources in _KINDS:
            resource = next((r for r in resources if node.allocatable.get(r, 0) > 0), None)
            if resource is None:
                continue
            label = type_label(scheme, kind)
            product = node.labels.get(label) if label else None
            groups.setdefault((resource, product), []).append(node.allocatable[resource])
    capacity = [
        AcceleratorCapacity(
            resource=r, product=p, nodes=len(c), allocatable=sum(c), max_per_node=max(c)
        )
        for (r, p), c in sorted(groups.items(), key=str)
    ]
    totals: dict[str, int] = {}
    for cap in capacity:
        totals[cap.resource] = totals.get(cap.resource, 0) + cap.allocatable
    previous = region.status.conditions if region.status else []
    ready = condition(
        "Ready",
        "True" if usable else "False",
        "NodesReady" if usable else "NoReadyNodes",
        f"{len(usable)}/{len(mine)} nodes ready and schedulable",
        generation=region.metadata.generation,
        now=now,
        previous=previous,
    )
    return FleetRegionStatus(
        observed_generation=region.metadata.generation,
        conditions=[ready],
        nodes=len(mine),
        ready_nodes=len(usable),
        accelerators=capacity,
        accelerator_summary=", ".join(f"{v} {k}" for k, v in sorted(totals.items())),
    )
