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
    "B200", "GB200", "H200", "H100", "H20", "A100", "A10G", "A10", "L40S", "L40", "L4",
    "T4", "V100", "RTX6000",
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
