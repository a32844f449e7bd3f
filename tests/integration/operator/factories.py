"""InferenceFactory manifests for operator tests."""

from __future__ import annotations

import copy
import json
from typing import Any

BASE: dict[str, Any] = {
    "apiVersion": "inference.factory.dev/v1alpha1",
    "kind": "InferenceFactory",
    "metadata": {"name": "llama"},
    "spec": {
        "model": {"name": "llama-3.1-8b-instruct", "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "engine": {"args": {"maxModelLen": 8192, "maxNumSeqs": 64}},
        "residency": {"jurisdictions": ["EU"]},
        "pools": [
            {"name": "h100-dub", "region": "eu-west-1",
             "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
             "replicas": {"min": 2, "max": 4}},
            {"name": "inf2-fra", "region": "eu-central-1",
             "accelerator": {"kind": "neuron", "type": "inf2", "count": 1},
             "replicas": {"min": 1, "max": 2},
             "engine": {"args": {"maxModelLen": 4096, "maxNumSeqs": 8}}},
        ],
    },
}  # fmt: skip


def factory(name: str = "llama", **spec_changes: Any) -> dict[str, Any]:
    made = copy.deepcopy(BASE)
    made["metadata"]["name"] = name
    made["spec"].update(copy.deepcopy(spec_changes))
    return made


def as_json(obj: dict[str, Any]) -> str:
    return json.dumps(obj)
