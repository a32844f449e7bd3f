"""What the API knows about accelerator kinds and types (shared by the CRD rules and plan).

NVIDIA types are GPU families (``H100``, ``L4``, ...). Neuron types are EC2 instance families:
``inf2`` (Inferentia2) and ``trn1``/``trn1n``/``trn2``/``trn3`` (Trainium). ``inf1`` is
excluded: it uses the first-generation Neuron SDK that vLLM has never supported.

The extended resource alone does not say which type a node carries (an L4 node and an H100
node both offer ``nvidia.com/gpu``), so pools also get a node-affinity term on a label that
names the hardware. Which label that is depends on who labels the nodes: the FleetRegion's
``spec.nodeLabelScheme`` picks one of the schemes below (``SCHEME_LABELS``).
"""

from __future__ import annotations

from typing import Final, Literal, get_args

AcceleratorKind = Literal["nvidia", "neuron"]

NVIDIA_TYPES: Final[tuple[str, ...]] = (
    "B200",
    "GB200",
    "H200",
    "H100",
    "H20",
    "A100",
    "A10G",
    "A10",
    "L40S",
    "L40",
    "L4",
    "T4",
    "V100",
    "RTX6000",
)
# Pattern rather than a closed list: a new Trainium generation passes the API server and
# the operator then says whether it knows an image for it (NoDefaultImage otherwise).
NEURON_TYPE_PATTERN: Final[str] = r"^(inf2|trn[0-9]+n?)$"

# Neuron device plugin resources (awsdocs-neuron, "Kubernetes getting started"): it registers
# aws.amazon.com/neurondevice (whole devices, the recommended one), aws.amazon.com/neuroncore
# and aws.amazon.com/neuron, a backward-compatible alias of neurondevice. Karpenter models only
# aws.amazon.com/neuron (karpenter-provider-aws, ResourceAWSNeuron), so pools in Karpenter-run
# regions ask for that one.
NEURON_DEVICE_RESOURCE: Final[str] = "aws.amazon.com/neurondevice"
NEURON_LEGACY_RESOURCE: Final[str] = "aws.amazon.com/neuron"
RESOURCE_BY_KIND: Final[dict[str, str]] = {
    "nvidia": "nvidia.com/gpu",
    "neuron": NEURON_LEGACY_RESOURCE,
}
ACCELERATOR_RESOURCES: Final[tuple[str, ...]] = (
    "nvidia.com/gpu",
    NEURON_LEGACY_RESOURCE,
    NEURON_DEVICE_RESOURCE,
)

# Trn1/Trn1n devices form a 2D torus: the Neuron scheduler extension only allocates 1, 4, 8
# or all 16 devices to one container ("If your container requires a different number of
# devices, such as 2 or 5, we recommend that you use an Inf2 instance"; awsdocs-neuron,
# "Neuron scheduler extension", container device allocation on Trn1).
TRN1_DEVICE_COUNTS: Final[tuple[int, ...]] = (1, 4, 8, 16)

# NeuronCores that vLLM's tensor parallelism spans per Neuron device. inf2/trn1: 2 cores per
# device (AWS Neuron docs, "Inferentia2/Trainium architecture"). trn2: 8 physical cores per
# device exposed as 4 logical cores with the default LNC=2 (Neuron docs, "Logical
# NeuronCore configuration"). Types missing here need an explicit tensorParallelSize.
NEURON_CORES_PER_DEVICE: Final[dict[str, int]] = {"inf2": 2, "trn1": 2, "trn1n": 2, "trn2": 4}

NodeLabelScheme = Literal["gfd", "karpenter", "eks-auto", "gke", "instance-type", "none"]
NODE_LABEL_SCHEMES: Final[tuple[str, ...]] = get_args(NodeLabelScheme)
KARPENTER_SCHEMES: Final[frozenset[str]] = frozenset({"karpenter", "eks-auto"})

GPU_PRODUCT_LABEL: Final[str] = "nvidia.com/gpu.product"
INSTANCE_TYPE_LABEL: Final[str] = "node.kubernetes.io/instance-type"

# GPU feature discovery: the product name from NVML, spaces turned into dashes.
_GFD_PRODUCTS: Final[dict[str, tuple[str, ...]]] = {
    "H100": ("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"),
    "H200": ("NVIDIA-H200", "NVIDIA-H200-NVL"),
    "A100": ("NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-80GB-PCIe",
             "NVIDIA-A100-PCIE-40GB"),
    "A10G": ("NVIDIA-A10G",),
    "A10": ("NVIDIA-A10",),
    "L40S": ("NVIDIA-L40S",),
    "L40": ("NVIDIA-L40",),
    "L4": ("NVIDIA-L4",),
    "T4": ("Tesla-T4",),
    "V100": ("Tesla-V100-SXM2-16GB", "Tesla-V100-SXM2-32GB", "Tesla-V100-PCIE-16GB",
             "Tesla-V100-PCIE-32GB"),
    "B200": ("NVIDIA-B200",),
    "GB200": ("NVIDIA-GB200",),
    "H20": ("NVIDIA-H20",),
}  # fmt: skip
# Karpenter (karpenter.k8s.aws/instance-gpu-name) and EKS Auto Mode
# (eks.amazonaws.com/instance-gpu-name): EC2's GPU name in lower case (Karpenter's and EKS's
# well-known label tables give t4, l4, a10g, a100, h100, h200, b200 as values).
_EC2_GPU_NAMES: Final[dict[str, tuple[str, ...]]] = {
    t: (t.lower(),) for t in ("B200", "H200", "H100", "A100", "A10G", "L40S", "L4", "T4", "V100")
}
# GKE (cloud.google.com/gke-accelerator): GKE's accelerator names ("About GPUs in GKE").
_GKE_ACCELERATORS: Final[dict[str, tuple[str, ...]]] = {
    "GB200": ("nvidia-gb200",),
    "B200": ("nvidia-b200",),
    "H200": ("nvidia-h200-141gb",),
    "H100": ("nvidia-h100-80gb", "nvidia-h100-mega-80gb"),
    "A100": ("nvidia-tesla-a100", "nvidia-a100-80gb"),
    "L4": ("nvidia-l4",),
    "T4": ("nvidia-tesla-t4",),
    "V100": ("nvidia-tesla-v100",),
    "RTX6000": ("nvidia-rtx-pro-6000",),
}


def _sizes(family: str, *sizes: str) -> tuple[str, ...]:
    return tuple(f"{family}.{size}" for size in sizes)


_G_SIZES = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge",
            "48xlarge")  # fmt: skip
# EC2 instance types per GPU type (EC2 "Accelerated computing" instance pages): the instance
# family names the GPU (H100 -> p5, L4 -> g6/gr6, ...).
_EC2_GPU_INSTANCE_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "B200": ("p6-b200.48xlarge",),
    "GB200": ("p6e-gb200.36xlarge",),
    "H200": ("p5e.48xlarge", "p5en.48xlarge"),
    "H100": ("p5.4xlarge", "p5.48xlarge"),
    "A100": ("p4d.24xlarge", "p4de.24xlarge"),
    "A10G": _sizes("g5", *_G_SIZES),
    "L40S": _sizes("g6e", *_G_SIZES),
    "L4": (*_sizes("g6", *_G_SIZES), "gr6.4xlarge", "gr6.8xlarge"),
    "T4": _sizes("g4dn", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge",
                 "metal"),
    "V100": ("p3.2xlarge", "p3.8xlarge", "p3.16xlarge", "p3dn.24xlarge"),
}  # fmt: skip
# EC2 instance types per Neuron family (AWS EC2 instance-type pages).
NEURON_INSTANCE_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "inf2": ("inf2.xlarge", "inf2.8xlarge", "inf2.24xlarge", "inf2.48xlarge"),
    "trn1": ("trn1.2xlarge", "trn1.32xlarge"),
    "trn1n": ("trn1n.32xlarge",),
    "trn2": ("trn2.48xlarge", "trn2u.48xlarge"),
}
# Karpenter's and EKS Auto Mode's instance-family label: the part of the type before the dot.
_NEURON_FAMILIES: Final[dict[str, tuple[str, ...]]] = {
    t: tuple(sorted({i.split(".", 1)[0] for i in types}))
    for t, types in NEURON_INSTANCE_TYPES.items()
}

LabelTable = tuple[str, dict[str, tuple[str, ...]]]
_INSTANCE_TYPES: Final[LabelTable] = (INSTANCE_TYPE_LABEL, NEURON_INSTANCE_TYPES)
# scheme -> kind -> (label key, accelerator type -> accepted values). GFD labels only NVIDIA
# GPUs and GKE has no Neuron: their Neuron nodes are told apart by instance type, which every
# cloud node carries. `none`: no label names the type (nodes without GFD or cloud-provider
# labels, e.g. hybrid or bare-metal nodes).
SCHEME_LABELS: Final[dict[str, dict[str, LabelTable]]] = {
    "gfd": {"nvidia": (GPU_PRODUCT_LABEL, _GFD_PRODUCTS), "neuron": _INSTANCE_TYPES},
    "karpenter": {
        "nvidia": ("karpenter.k8s.aws/instance-gpu-name", _EC2_GPU_NAMES),
        "neuron": ("karpenter.k8s.aws/instance-family", _NEURON_FAMILIES),
    },
    "eks-auto": {
        "nvidia": ("eks.amazonaws.com/instance-gpu-name", _EC2_GPU_NAMES),
        "neuron": ("eks.amazonaws.com/instance-family", _NEURON_FAMILIES),
    },
    "gke": {"nvidia": ("cloud.google.com/gke-accelerator", _GKE_ACCELERATORS),
            "neuron": _INSTANCE_TYPES},
    "instance-type": {"nvidia": (INSTANCE_TYPE_LABEL, _EC2_GPU_INSTANCE_TYPES),
                      "neuron": _INSTANCE_TYPES},
    "none": {},
}  # fmt: skip


def type_label(scheme: str, kind: str) -> str | None:
    """The node label that names an accelerator type of this kind, or None (scheme none)."""
    table = SCHEME_LABELS[scheme].get(kind)
    return table[0] if table else None


def type_requirement(
    scheme: str, kind: str, accelerator_type: str
) -> tuple[str, tuple[str, ...]] | None:
    """The node label and its accepted values that pin a pool to its accelerator type, or
    None when the scheme has no value for the type (or no label at all: see
    ``labels_types``)."""
    table = SCHEME_LABELS[scheme].get(kind)
    if table is None or accelerator_type not in table[1]:
        return None
    return table[0], table[1][accelerator_type]


def labels_types(scheme: str) -> bool:
    """Whether nodes of this scheme carry any label that tells accelerator types apart."""
    return bool(SCHEME_LABELS[scheme])
