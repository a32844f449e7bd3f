"""The local fleet's topology file, and the Node objects it describes.

The file (`deploy/local/topology.yaml`) names regions, their jurisdictions, node pools by AWS
(or GCE) instance type, and inter-region round trips. `node_manifests()` turns it into
kwok-managed `v1.Node` objects with the labels, capacity and taints that real clusters carry.

Real clusters differ in who labels the nodes, so each region says how its nodes are labelled
(`nodeLabelScheme`, the same names as the FleetRegion field):

- `gfd` (default): NVIDIA GPU feature discovery's `nvidia.com/gpu.*` labels;
- `karpenter`: Karpenter's `karpenter.k8s.aws/instance-*` and `karpenter.sh/*` labels, no GFD;
- `eks-auto`: EKS Auto Mode's `eks.amazonaws.com/*` labels, no GFD;
- `gke`: GKE's `cloud.google.com/gke-accelerator` and `cloud.google.com/gke-nodepool`;
- `instance-type`: only the cloud provider's labels (an EKS managed node group on the GPU AMI
  with the device plugin and no GFD);
- `none`: no label that names the hardware, not even the instance type (nodes joined without
  a cloud provider, such as EKS hybrid nodes or bare metal).

The values are written out here from each provider's documentation, not derived from the
operator's tables, so that tests of placement compare two independent sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factoryctl.errors import TopologyError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOPOLOGY = REPO_ROOT / "deploy" / "local" / "topology.yaml"


class InstanceShape(BaseModel):
    """What one AWS instance type offers, as a node advertises it."""

    cpu: int
    memory_gi: int
    accelerator_kind: str | None = None  # "nvidia" | "neuron"
    accelerator_type: str | None = None  # "H100", "L4", "inf2", "trn1"
    accelerators: int = 0
    neuron_cores: int = 0
    # Node-local disk the kubelet offers as ephemeral-storage: the instance-store NVMe where
    # the type has it (as EKS nodes use it with instance-store RAID0), else an EBS root volume.
    disk_gi: int = 100
    labels: dict[str, str] = Field(default_factory=dict)
    taint_value: str | None = None
    # EC2's GPU name in lower case, as Karpenter (karpenter.k8s.aws/instance-gpu-name) and EKS
    # Auto Mode (eks.amazonaws.com/instance-gpu-name) label it: "h100", "l4".
    ec2_gpu_name: str | None = None
    # GKE's accelerator name (cloud.google.com/gke-accelerator): "nvidia-h100-80gb".
    gke_accelerator: str | None = None


# NVIDIA labels are those GPU feature discovery sets (product, count, memory in MiB, family,
# compute capability). Neuron nodes carry Karpenter's well-known accelerator labels; the Neuron
# device plugin advertises aws.amazon.com/neuron (devices), /neuroncore and /neurondevice.
# Taints differ by provisioner: GKE uses nvidia.com/gpu=present, Karpenter setups
# nvidia.com/gpu=true; both occur here so that pools must tolerate the key with Exists.
INSTANCE_SHAPES: dict[str, InstanceShape] = {
    "p5.48xlarge": InstanceShape(
        cpu=192,
        disk_gi=28000,
        memory_gi=2048,
        accelerator_kind="nvidia",
        accelerator_type="H100",
        accelerators=8,
        taint_value="true",
        labels={
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            "nvidia.com/gpu.count": "8",
            "nvidia.com/gpu.memory": "81559",
            "nvidia.com/gpu.family": "hopper",
            "nvidia.com/gpu.compute.major": "9",
            "nvidia.com/gpu.compute.minor": "0",
            "nvidia.com/gpu.machine": "p5.48xlarge",
        },
        ec2_gpu_name="h100",
    ),
    "g6.12xlarge": InstanceShape(
        cpu=48,
        disk_gi=3500,
        memory_gi=192,
        accelerator_kind="nvidia",
        accelerator_type="L4",
        accelerators=4,
        taint_value="present",
        labels={
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-L4",
            "nvidia.com/gpu.count": "4",
            "nvidia.com/gpu.memory": "23034",
            "nvidia.com/gpu.family": "ada-lovelace",
            "nvidia.com/gpu.compute.major": "8",
            "nvidia.com/gpu.compute.minor": "9",
            "nvidia.com/gpu.machine": "g6.12xlarge",
        },
        ec2_gpu_name="l4",
    ),
    # The smallest L4 node (AWS: 4 vCPU, 16 GiB, 1 x L4 24GB, 250 GB NVMe): one L4 replica
    # fits, so a pool of them runs one engine per node, as the real-engine pool wants.
    "g6.xlarge": InstanceShape(
        cpu=4,
        disk_gi=232,
        memory_gi=16,
        accelerator_kind="nvidia",
        accelerator_type="L4",
        accelerators=1,
        taint_value="present",
        labels={
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-L4",
            "nvidia.com/gpu.count": "1",
            "nvidia.com/gpu.memory": "23034",
            "nvidia.com/gpu.family": "ada-lovelace",
            "nvidia.com/gpu.compute.major": "8",
            "nvidia.com/gpu.compute.minor": "9",
            "nvidia.com/gpu.machine": "g6.xlarge",
        },
        ec2_gpu_name="l4",
    ),
    # GCE accelerator-optimized machine types (cloud.google.com "GPU machine types"):
    # a3-highgpu-8g 208 vCPU, 1872 GB, 8 x H100 80GB; g2-standard-48 48 vCPU, 192 GB, 4 x L4.
    "a3-highgpu-8g": InstanceShape(
        cpu=208,
        disk_gi=5500,
        memory_gi=1743,
        accelerator_kind="nvidia",
        accelerator_type="H100",
        accelerators=8,
        taint_value="present",
        gke_accelerator="nvidia-h100-80gb",
    ),
    "g2-standard-48": InstanceShape(
        cpu=48,
        disk_gi=1400,
        memory_gi=178,
        accelerator_kind="nvidia",
        accelerator_type="L4",
        accelerators=4,
        taint_value="present",
        gke_accelerator="nvidia-l4",
    ),
    "inf2.48xlarge": InstanceShape(
        cpu=192,
        disk_gi=2048,
        memory_gi=768,
        accelerator_kind="neuron",
        accelerator_type="inf2",
        accelerators=12,
        neuron_cores=24,
        taint_value="",
        labels={
            "karpenter.k8s.aws/instance-accelerator-manufacturer": "aws",
            "karpenter.k8s.aws/instance-accelerator-name": "inferentia",
            "karpenter.k8s.aws/instance-accelerator-count": "12",
            "karpenter.k8s.aws/instance-family": "inf2",
        },
    ),
    "trn1.32xlarge": InstanceShape(
        cpu=128,
        disk_gi=7000,
        memory_gi=512,
        accelerator_kind="neuron",
        accelerator_type="trn1",
        accelerators=16,
        neuron_cores=32,
        taint_value="",
        labels={
            "karpenter.k8s.aws/instance-accelerator-manufacturer": "aws",
            "karpenter.k8s.aws/instance-accelerator-name": "trainium",
            "karpenter.k8s.aws/instance-accelerator-count": "16",
            "karpenter.k8s.aws/instance-family": "trn1",
        },
    ),
    "m7i.4xlarge": InstanceShape(cpu=16, memory_gi=64),
}

RESOURCE_BY_KIND = {"nvidia": "nvidia.com/gpu", "neuron": "aws.amazon.com/neuron"}
# Nodes of a pool served by the real vLLM engine carry this label and a NoSchedule taint
# with the same key, so that only pods meant for a real engine (which tolerate it) land there.
ENGINE_LABEL = "inference.factory.dev/local-engine"
EngineKind = Literal["sim", "vllm"]


class NodePool(BaseModel):
    """A group of identical nodes in one region."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    instance_type: str = Field(alias="instanceType")
    count: int = Field(ge=0, le=50)
    # Who serves the engine pods of these nodes: the simulator, or the real vLLM (CPU build,
    # the tiny model) started with the pod's own command line (factoryctl.agents.real_engine).
    engine: EngineKind = "sim"


NodeLabelScheme = Literal["gfd", "karpenter", "eks-auto", "gke", "instance-type", "none"]


class Region(BaseModel):
    """One region of the local fleet."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    jurisdiction: str = Field(pattern=r"^[A-Z]{2,8}$")
    nodeLabelScheme: NodeLabelScheme | None = None
    zones: list[str] = Field(min_length=1)
    nodePools: list[NodePool]

    @property
    def scheme(self) -> str:
        """How this region's nodes are labelled (gfd unless the file says otherwise)."""
        return self.nodeLabelScheme or "gfd"


class Topology(BaseModel):
    """The whole topology file."""

    model_config = ConfigDict(extra="forbid")
    intraRegionRttMs: float = 2.0
    regions: list[Region] = Field(min_length=1)
    rttMs: dict[str, dict[str, float]] = Field(default_factory=dict)

    def rtt_ms(self, a: str, b: str) -> float:
        """Round trip between two regions, symmetric; intra-region when equal."""
        if a == b:
            return self.intraRegionRttMs
        found = self.rttMs.get(a, {}).get(b)
        if found is None:
            found = self.rttMs.get(b, {}).get(a)
        if found is None:
            raise TopologyError(f"no round trip between {a} and {b} in the topology file")
        return found

    def real_engine_pools(self) -> list[tuple[str, NodePool]]:
        """(region, node pool) of every pool served by a real engine that has nodes."""
        return [
            (r.name, p) for r in self.regions for p in r.nodePools if p.engine != "sim" and p.count
        ]

    def rtt_table(self, region: str) -> dict[str, float]:
        """Round trips from every region to `region`."""
        return {other.name: self.rtt_ms(other.name, region) for other in self.regions}


def load_topology(path: Path | None = None) -> Topology:
    """Read and validate the topology file; unknown instance types are refused."""
    path = path or DEFAULT_TOPOLOGY
    try:
        topology = Topology.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError as exc:
        raise TopologyError(f"topology file {path} not found") from exc
    except (ValidationError, yaml.YAMLError) as exc:
        raise TopologyError(f"topology file {path} is invalid: {exc}") from exc
    for region in topology.regions:
        for pool in region.nodePools:
            if pool.instance_type not in INSTANCE_SHAPES:
                raise TopologyError(
                    f"{path}: region {region.name} pool {pool.name}: unknown instance type "
                    f"{pool.instance_type!r}; known: {', '.join(sorted(INSTANCE_SHAPES))}"
                )
            missing = _missing_type_label(region.scheme, INSTANCE_SHAPES[pool.instance_type])
            if missing:
                raise TopologyError(
                    f"{path}: region {region.name} pool {pool.name}: {pool.instance_type} "
                    f"has no {missing} for nodeLabelScheme {region.scheme}"
                )
    names = [r.name for r in topology.regions]
    for a in names:
        for b in names:
            topology.rtt_ms(a, b)
    return topology


def node_manifests(topology: Topology) -> list[dict[str, Any]]:
    """Every fake Node of the topology, ready for `kubectl apply`."""
    nodes = []
    for region in topology.regions:
        for pool in region.nodePools:
            shape = INSTANCE_SHAPES[pool.instance_type]
            for index in range(pool.count):
                nodes.append(_node(region, pool, shape, index))
    return nodes


def _node(region: Region, pool: NodePool, shape: InstanceShape, index: int) -> dict[str, Any]:
    name = f"{region.name}-{pool.name}-{index}"
    zone = region.zones[index % len(region.zones)]
    capacity = {
        "cpu": str(shape.cpu),
        "memory": f"{shape.memory_gi}Gi",
        "ephemeral-storage": f"{shape.disk_gi}Gi",
        "pods": "110",
    }
    taints: list[dict[str, str]] = []
    if shape.accelerator_kind is not None:
        resource = RESOURCE_BY_KIND[shape.accelerator_kind]
        capacity[resource] = str(shape.accelerators)
        taint = {"key": resource, "effect": "NoSchedule"}
        if shape.taint_value:
            taint["value"] = shape.taint_value
        taints.append(taint)
    if shape.accelerator_kind == "neuron":
        capacity["aws.amazon.com/neuroncore"] = str(shape.neuron_cores)
        capacity["aws.amazon.com/neurondevice"] = str(shape.accelerators)
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": pool.instance_type,
        "topology.kubernetes.io/region": region.name,
        "topology.kubernetes.io/zone": zone,
        "inference.factory.dev/node-pool": pool.name,
        "type": "kwok",
        **scheme_labels(region.scheme, pool, shape),
    }
    if region.scheme == "none":
        del labels["node.kubernetes.io/instance-type"]
    if pool.engine != "sim":
        labels[ENGINE_LABEL] = pool.engine
        taints.append({"key": ENGINE_LABEL, "value": pool.engine, "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints} if taints else {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
        },
    }


def _missing_type_label(scheme: str, shape: InstanceShape) -> str | None:
    """What a node of this shape would lack to be labelled under the scheme, if anything."""
    if shape.accelerator_kind != "nvidia":
        return None
    if scheme in {"karpenter", "eks-auto"} and shape.ec2_gpu_name is None:
        return "EC2 GPU name (not an EC2 instance type)"
    if scheme == "gke" and shape.gke_accelerator is None:
        return "GKE accelerator name (not a GCE machine type)"
    if scheme == "gfd" and "nvidia.com/gpu.product" not in shape.labels:
        return "GPU feature discovery labels"
    return None


def scheme_labels(scheme: str, pool: NodePool, shape: InstanceShape) -> dict[str, str]:
    """The provisioner's own labels of one node under a labelling scheme (beyond the
    well-known Kubernetes ones)."""
    family, _, size = pool.instance_type.partition(".")
    nvidia = shape.accelerator_kind == "nvidia"
    if scheme == "gfd":
        return dict(shape.labels)
    if scheme == "karpenter":
        labels = {
            "karpenter.sh/nodepool": pool.name,
            "karpenter.sh/capacity-type": "on-demand",
            "karpenter.k8s.aws/instance-family": family,
            "karpenter.k8s.aws/instance-size": size,
            "karpenter.k8s.aws/instance-category": family[0],
        }
        if nvidia:
            labels["karpenter.k8s.aws/instance-gpu-name"] = str(shape.ec2_gpu_name)
            labels["karpenter.k8s.aws/instance-gpu-manufacturer"] = "nvidia"
            labels["karpenter.k8s.aws/instance-gpu-count"] = str(shape.accelerators)
        else:
            labels |= {k: v for k, v in shape.labels.items() if k.startswith("karpenter.")}
        return labels
    if scheme == "eks-auto":
        labels = {
            "eks.amazonaws.com/compute-type": "auto",
            "karpenter.sh/nodepool": pool.name,
            "eks.amazonaws.com/instance-family": family,
            "eks.amazonaws.com/instance-size": size,
        }
        if nvidia:
            labels["eks.amazonaws.com/instance-gpu-name"] = str(shape.ec2_gpu_name)
            labels["eks.amazonaws.com/instance-gpu-manufacturer"] = "nvidia"
            labels["eks.amazonaws.com/instance-gpu-count"] = str(shape.accelerators)
        return labels
    if scheme == "gke":
        labels = {"cloud.google.com/gke-nodepool": pool.name}
        if shape.gke_accelerator:
            labels["cloud.google.com/gke-accelerator"] = shape.gke_accelerator
        return labels
    return {}  # instance-type: only the cloud provider's labels; none: not even those
