"""FleetRegion status from the nodes it selects (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from factory_operator.api import FleetRegion, FleetRegionStatus
from factory_operator.api.accelerators import RESOURCE_BY_KIND
from factory_operator.api.region import AcceleratorCapacity

from .observed import NodeInfo
from .status import condition

PRODUCT_LABELS = ("nvidia.com/gpu.product", "node.kubernetes.io/instance-type")


def plan_region_status(
    region: FleetRegion, nodes: Sequence[NodeInfo], now: str
) -> FleetRegionStatus:
    """Nodes, ready nodes and accelerator capacity of one region."""
    selector = region.spec.selector(region.name)
    mine = [n for n in nodes if all(n.labels.get(k) == v for k, v in selector.items())]
    usable = [n for n in mine if n.ready and n.schedulable]
    groups: dict[tuple[str, str | None], list[int]] = {}
    for node in usable:
        product = next((node.labels[k] for k in PRODUCT_LABELS if k in node.labels), None)
        for resource in RESOURCE_BY_KIND.values():
            count = node.allocatable.get(resource, 0)
            if count > 0:
                groups.setdefault((resource, product), []).append(count)
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
