"""FleetRegion (cluster-scoped): one region of the fleet, its jurisdiction and its economics."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .accelerators import NodeLabelScheme
from .common import (
    JURISDICTION,
    MAX_CONDITIONS,
    MAX_LABELS,
    MAX_NAME,
    MAX_URI,
    ApiModel,
    Condition,
    LabelValue,
    ObjectMeta,
    cel,
    cel_rules,
)

URL_PATTERN = r"^https?://[^\s]+$"
REGION_LABEL = "topology.kubernetes.io/region"


class PrometheusRef(ApiModel):
    """Where the region's Prometheus answers PromQL (used by the router's load snapshot)."""

    url: str = Field(
        description="Base URL of the Prometheus HTTP API.", max_length=MAX_URI, pattern=URL_PATTERN
    )


class FleetRegionSpec(ApiModel):
    """Desired description of a region."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.pricing) || self.pricing.all(t, self.pricing[t] >= 0.0)",
                "pricing values must not be negative",
                ".pricing",
            ),
            cel(
                "!has(self.power) || self.power.all(t, self.power[t] > 0)",
                "power values must be positive watts",
                ".power",
            ),
        )
    )

    jurisdiction: str = Field(
        description="Legal zone whose rules apply to data processed here, as an upper-case "
        "code (EU, US, UK, IN, ...). Residency rules of factories and tenants match it.",
        pattern=JURISDICTION,
        max_length=8,
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        description="Labels that select this region's nodes. Default: "
        "topology.kubernetes.io/region=<metadata.name>.",
        json_schema_extra={"maxProperties": MAX_LABELS},
    )
    endpoint: str | None = Field(
        default=None,
        description="Where this region's traffic enters (one-cluster-per-region fleets).",
        max_length=MAX_URI,
        pattern=URL_PATTERN,
    )
    node_label_scheme: NodeLabelScheme | None = Field(
        default=None,
        description="Which node labels tell accelerator types apart (H100 from L4, inf2 from "
        "trn1): gfd (nvidia.com/gpu.product from NVIDIA GPU feature discovery), karpenter "
        "(karpenter.k8s.aws/instance-gpu-name, karpenter.k8s.aws/instance-family), eks-auto "
        "(eks.amazonaws.com/instance-gpu-name, eks.amazonaws.com/instance-family), gke "
        "(cloud.google.com/gke-accelerator), instance-type (node.kubernetes.io/instance-type) "
        "or none (no such label: pools must pin their type with pool.nodeSelector). Neuron "
        "nodes go by instance type under gfd and gke. Default: the operator's "
        "--node-label-scheme (gfd).",
    )
    prometheus: PrometheusRef | None = Field(
        default=None, description="The region's Prometheus, if it has its own."
    )
    pricing: dict[str, float] | None = Field(
        default=None,
        description="Price per accelerator-hour (USD) by accelerator type (H100, L4, inf2...).",
        json_schema_extra={"maxProperties": MAX_LABELS},
    )
    power: dict[str, int] | None = Field(
        default=None,
        description="Power draw per accelerator in watts, by accelerator type.",
        json_schema_extra={"maxProperties": MAX_LABELS},
    )

    def selector(self, region_name: str) -> dict[str, str]:
        """The node selector in force (the default when none is given)."""
        return dict(self.node_selector) if self.node_selector else {REGION_LABEL: region_name}


class AcceleratorCapacity(ApiModel):
    """Accelerators of one resource seen on the region's nodes."""

    resource: str = Field(
        description="Extended resource name, e.g. nvidia.com/gpu.", max_length=MAX_NAME
    )
    product: str | None = Field(
        default=None,
        description="Value of the label that names the accelerator type under the region's "
        "nodeLabelScheme (e.g. NVIDIA-H100-80GB-HBM3, h100, inf2.48xlarge), when known.",
        max_length=MAX_NAME,
    )
    nodes: int = Field(description="Ready, schedulable nodes offering this resource.", ge=0)
    allocatable: int = Field(description="Sum of allocatable units on those nodes.", ge=0)
    max_per_node: int = Field(description="Largest allocatable count on one node.", ge=0)


class FleetRegionStatus(ApiModel):
    """What the operator observed about the region."""

    observed_generation: int | None = Field(default=None, description="Generation observed.", ge=0)
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready: the region has ready nodes.",
        max_length=MAX_CONDITIONS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    nodes: int = Field(default=0, description="Nodes matching the region's selector.", ge=0)
    ready_nodes: int = Field(default=0, description="Of those, Ready and schedulable.", ge=0)
    accelerators: list[AcceleratorCapacity] = Field(
        default_factory=list,
        description="Accelerator capacity by resource and product.",
        max_length=32,
    )
    accelerator_summary: str = Field(
        default="",
        description="Short text for kubectl get, e.g. '16 nvidia.com/gpu'.",
        max_length=MAX_URI,
    )


class FleetRegion(ApiModel):
    """A FleetRegion object as read from the API server."""

    api_version: Literal["inference.factory.dev/v1alpha1"] = Field(
        default="inference.factory.dev/v1alpha1", description="API version."
    )
    kind: Literal["FleetRegion"] = Field(default="FleetRegion", description="Kind.")
    metadata: ObjectMeta = Field(description="Object metadata.")
    spec: FleetRegionSpec = Field(description="Desired state.")
    status: FleetRegionStatus | None = Field(default=None, description="Observed state.")

    @property
    def name(self) -> str:
        """The region's name (metadata.name)."""
        return self.metadata.name
