"""What the API knows about accelerator kinds and types (shared by the CRD rules and plan).

NVIDIA types are the names GPU feature discovery puts in ``nvidia.com/gpu.product``
(``NVIDIA-H100-80GB-HBM3``) reduced to the family. Neuron types are EC2 instance families:
``inf2`` (Inferentia2) and ``trn1``/``trn1n``/``trn2``/``trn3`` (Trainium). ``inf1`` is
excluded: it uses the first-generation Neuron SDK that vLLM has never supported.
"""

from __future__ import annotations

from typing import Final, Literal

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

RESOURCE_BY_KIND: Final[dict[str, str]] = {
    "nvidia": "nvidia.com/gpu",
    "neuron": "aws.amazon.com/neuron",
}

# NeuronCores that vLLM's tensor parallelism spans per Neuron device. inf2/trn1: 2 cores per
# device (AWS Neuron docs, "Inferentia2/Trainium architecture"). trn2: 8 physical cores per
# device exposed as 4 logical cores with the default LNC=2 (Neuron docs, "Logical
# NeuronCore configuration"). Types missing here need an explicit tensorParallelSize.
NEURON_CORES_PER_DEVICE: Final[dict[str, int]] = {"inf2": 2, "trn1": 2, "trn1n": 2, "trn2": 4}

# Which nodes carry a given accelerator type. The extended resource alone does not say
# (an L4 node and an H100 node both offer nvidia.com/gpu), so pools also get a node-affinity
# term on the label that names the hardware: `nvidia.com/gpu.product` as GPU feature
# discovery sets it (GFD takes the product name from NVML, spaces turned into dashes), and
# `node.kubernetes.io/instance-type` (set by the cloud provider) for Neuron instances.
# A type missing here gets no such term; pin it with pool.nodeSelector.
GPU_PRODUCT_LABEL: Final[str] = "nvidia.com/gpu.product"
INSTANCE_TYPE_LABEL: Final[str] = "node.kubernetes.io/instance-type"
NVIDIA_PRODUCTS: Final[dict[str, tuple[str, ...]]] = {
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
}  # fmt: skip
# EC2 instance types per Neuron family (AWS EC2 instance-type pages).
NEURON_INSTANCE_TYPES: Final[dict[str, tuple[str, ...]]] = {
    "inf2": ("inf2.xlarge", "inf2.8xlarge", "inf2.24xlarge", "inf2.48xlarge"),
    "trn1": ("trn1.2xlarge", "trn1.32xlarge"),
    "trn1n": ("trn1n.32xlarge",),
    "trn2": ("trn2.48xlarge", "trn2u.48xlarge"),
}


def type_requirement(kind: str, accelerator_type: str) -> tuple[str, tuple[str, ...]] | None:
    """The node label and its accepted values that pin a pool to its accelerator type."""
    if kind == "nvidia" and accelerator_type in NVIDIA_PRODUCTS:
        return GPU_PRODUCT_LABEL, NVIDIA_PRODUCTS[accelerator_type]
    if kind == "neuron" and accelerator_type in NEURON_INSTANCE_TYPES:
        return INSTANCE_TYPE_LABEL, NEURON_INSTANCE_TYPES[accelerator_type]
    return None
