"""Model validation, CRD generation (staleness, structure, docs) and CEL rules evaluated
with cel-python against table-driven examples (the API server tests come later)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from conftest import factory, pool
from pydantic import ValidationError

from factory_operator.api import FleetRegion, InferenceFactory
from factory_operator.api.crdgen import crd_objects, render_crds

CRDS = Path(__file__).resolve().parents[3] / "crds"


def test_crds_not_stale() -> None:
    for name, text in render_crds().items():
        path = CRDS / name
        assert path.exists(), f"{path} missing: run python -m factory_operator.api.crdgen"
        assert path.read_text() == text, f"{name} stale: run python -m factory_operator.api.crdgen"


def _schema(plural: str) -> dict[str, Any]:
    crd = crd_objects()[f"{plural}.inference.factory.dev.yaml"]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _walk(node: Any, path: str = ""):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        yield path, node
        for key, sub in node.get("properties", {}).items():
            yield from _walk(sub, f"{path}.{key}")
        if "items" in node:
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("plural", ["inferencefactories", "fleetregions"])
def test_schema_is_structural_and_documented(plural: str) -> None:
    for path, node in _walk(_schema(plural)):
        assert "type" in node, path
        for banned in ("$ref", "anyOf", "allOf", "title", "default", "const"):
            assert banned not in node, f"{path}: {banned}"
        if path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description"
        if node["type"] == "string" and path.startswith(".spec") and "enum" not in node:
            assert "maxLength" in node, f"{path}: CEL cost needs maxLength"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: CEL cost needs maxItems"


def test_crd_metadata() -> None:
    crd = crd_objects()["inferencefactories.inference.factory.dev.yaml"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {
        "Model",
        "Pools",
        "Jurisdictions",
        "Age",
    }
    assert "if" in crd["spec"]["names"]["shortNames"]
    pools = _schema("inferencefactories")["properties"]["spec"]["properties"]["pools"]
    assert pools["description"] and pools["items"]["properties"]["name"]["description"]


def _rules(plural: str) -> dict[str, str]:
    return {
        r["message"]: r["rule"]
        for _, node in _walk(_schema(plural))
        for r in node.get("x-kubernetes-validations", [])
    }


def _eval(rule: str, value: Any) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule))
    return bool(program.evaluate({"self": celpy.json_to_cel(value)}))


def _rule(fragment: str) -> str:
    matches = [r for m, r in _rules("inferencefactories").items() if fragment in m]
    assert len(matches) == 1, fragment
    return matches[0]


CASES = [
    ("replicas.min must be <= replicas.max", {"min": 1, "max": 2}, True),
    ("replicas.min must be <= replicas.max", {"min": 3, "max": 2}, False),
    ("pool names must be unique", [{"name": "a"}, {"name": "b"}], True),
    ("pool names must be unique", [{"name": "a"}, {"name": "a"}], False),
    ("an nvidia accelerator type", {"kind": "nvidia", "type": "H100", "count": 1}, True),
    ("an nvidia accelerator type", {"kind": "nvidia", "type": "inf2", "count": 1}, False),
    ("a neuron accelerator type", {"kind": "neuron", "type": "trn2", "count": 1}, True),
    ("a neuron accelerator type", {"kind": "neuron", "type": "H100", "count": 1}, False),
    ("a neuron accelerator type", {"kind": "neuron", "type": "inf1", "count": 1}, False),
    ("speculative.model is required", {"method": "eagle", "numSpeculativeTokens": 2}, False),
    ("speculative.model is required", {"method": "ngram", "numSpeculativeTokens": 2}, True),
    ("an s3:// model needs", {"model": {"name": "m", "uri": "s3://b/p"}}, False),
    (
        "an s3:// model needs",
        {"model": {"uri": "s3://b/p", "credentialsSecretRef": {"name": "aws"}}},
        True,
    ),
    ("an s3:// model needs", {"model": {"uri": "s3://b/p"}, "serviceAccountName": "llm"}, True),
    ("cache takes exactly one", {"persistentVolumeClaim": "c"}, True),
    ("cache takes exactly one", {"persistentVolumeClaim": "c", "hostPath": "/d"}, False),
    ("cache takes exactly one", {}, False),
    (
        "a pvc:// model is mounted",
        {"name": "m", "uri": "pvc://c/p", "credentialsSecretRef": {"name": "s"}},
        False,
    ),
    ("extraArgs must not set", {"extraArgs": ["--port=1"]}, False),
    ("extraArgs must not set", {"extraArgs": ["--enforce-eager"]}, True),
    (
        "on nvidia, engine.args.tensorParallelSize",
        {
            "accelerator": {"kind": "nvidia", "type": "H100", "count": 2},
            "engine": {"args": {"tensorParallelSize": 4}},
        },
        False,
    ),
    (
        "on inf2/trn1",
        {
            "accelerator": {"kind": "neuron", "type": "inf2", "count": 2},
            "engine": {"args": {"tensorParallelSize": 4}},
        },
        True,
    ),
    (
        "gpuMemoryUtilization does not apply",
        {
            "accelerator": {"kind": "neuron", "type": "inf2", "count": 1},
            "engine": {"args": {"gpuMemoryUtilization": 0.9}},
        },
        False,
    ),
    ("accelerator resources come from", {"limits": {"nvidia.com/gpu": "1"}}, False),
    ("accelerator resources come from", {"requests": {"aws.amazon.com/neurondevice": "1"}}, False),
    ("a trn1/trn1n replica takes", {"kind": "neuron", "type": "trn1", "count": 4}, True),
    ("a trn1/trn1n replica takes", {"kind": "neuron", "type": "trn1", "count": 2}, False),
    ("a trn1/trn1n replica takes", {"kind": "neuron", "type": "trn1n", "count": 12}, False),
    ("a trn1/trn1n replica takes", {"kind": "neuron", "type": "inf2", "count": 3}, True),
    (
        "an s3:// model cannot be served by neuron pools",
        {"model": {"uri": "s3://b/p"}, "pools": [{"accelerator": {"kind": "neuron"}}]},
        False,
    ),
    (
        "an s3:// model cannot be served by neuron pools",
        {"model": {"uri": "s3://b/p"}, "pools": [{"accelerator": {"kind": "nvidia"}}]},
        True,
    ),
    (
        "an s3:// model cannot be served by neuron pools",
        {"model": {"uri": "hf://o/m"}, "pools": [{"accelerator": {"kind": "neuron"}}]},
        True,
    ),
    ("accelerator resources come from", {"limits": {"memory": "64Gi"}}, True),
    ("metadata.name must be a DNS-1035", {"metadata": {"name": "9lives"}}, False),
    (
        "<metadata.name>-<pool.name> must be at most 63",
        {"metadata": {"name": "a" * 40}, "spec": {"pools": [{"name": "b" * 22}]}},
        True,
    ),
    (
        "<metadata.name>-<pool.name> must be at most 63",
        {"metadata": {"name": "a" * 40}, "spec": {"pools": [{"name": "b" * 23}]}},
        False,
    ),
]


@pytest.mark.parametrize(("message", "value", "allowed"), CASES)
def test_cel_rule_intent(message: str, value: Any, allowed: bool) -> None:
    assert _eval(_rule(message), value) is allowed


def test_model_refuses_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        factory([pool("a", "eu-west-1", colour="blue")])
    with pytest.raises(ValidationError):
        factory([pool("Bad_Name", "eu-west-1")])
    with pytest.raises(ValidationError):
        factory([pool("a", "eu-west-1")], uri="ftp://x/y")
    with pytest.raises(ValidationError):
        factory([pool("a", "eu-west-1")], engine={"args": {"gpuMemoryUtilization": 0}})
    with pytest.raises(ValidationError):
        factory([pool("a", "eu-west-1")], residency=["eu"])
    assert isinstance(factory([pool("a", "eu-west-1")]), InferenceFactory)


@pytest.mark.parametrize(
    ("args", "valid"),
    [
        ({"kvCacheDtype": "fp8_e4m3"}, True),
        ({"kvCacheDtype": "nvfp4"}, True),
        ({"kvCacheDtype": "int8"}, False),
        ({"quantization": "compressed-tensors"}, True),
        ({"quantization": "awq_marlin"}, True),
        ({"quantization": "gguf"}, False),  # a plugin method in vLLM 0.32
        ({"quantization": "squeezellm"}, False),
    ],
)
def test_engine_enums_follow_vllm_032(args: dict[str, Any], valid: bool) -> None:
    schema = _schema("inferencefactories")["properties"]["spec"]["properties"]["engine"]
    enums = schema["properties"]["args"]["properties"]
    key, value = next(iter(args.items()))
    assert (value in enums[key]["enum"]) is valid
    if valid:
        factory([pool("a", "eu-west-1")], engine={"args": args})
    else:
        with pytest.raises(ValidationError):
            factory([pool("a", "eu-west-1")], engine={"args": args})


def test_region_node_label_scheme_is_an_enum() -> None:
    scheme = _schema("fleetregions")["properties"]["spec"]["properties"]["nodeLabelScheme"]
    assert scheme["enum"] == ["gfd", "karpenter", "eks-auto", "gke", "instance-type", "none"]
    with pytest.raises(ValidationError):
        FleetRegion.model_validate(
            {"metadata": {"name": "r"}, "spec": {"jurisdiction": "EU", "nodeLabelScheme": "gpu"}}
        )


def test_examples_validate() -> None:
    examples = Path(__file__).resolve().parents[3] / "deploy" / "examples"
    kinds = set()
    for path in sorted(examples.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.add(doc["kind"])
            model = InferenceFactory if doc["kind"] == "InferenceFactory" else FleetRegion
            model.model_validate(doc)
    assert kinds == {"FleetRegion", "InferenceFactory"}
