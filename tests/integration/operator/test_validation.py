"""Invalid factories: refused by the API server (schema, CEL) naming the field, or, where only
the operator can know (region, residency, capacity), reported in a condition with nothing
deployed."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.operator.conftest import RunningOperator, wait_condition
from tests.integration.operator.factories import as_json, factory
from tests.support.cluster import KubectlCluster

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        keys = path.split(".")
        target: Any = obj
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target.setdefault(key, {})
        last = keys[-1]
        if value is _DELETE:
            del target[last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


_DELETE = object()
POOL0 = "spec.pools.0"

# spec.rollout (BASE's pools: h100-dub in eu-west-1, inf2-fra in eu-central-1).
_PROMPT = {"name": "capital", "prompt": "Capital of France?", "checks": {"regex": "Paris"}}
_MESSAGES = [{"role": "user", "content": "Capital of France?"}]
ROLLOUT_REFUSED: list[tuple[str, Mutation, list[str]]] = [
    ("rollout-weights-not-increasing",
     _set("spec.rollout", {"steps": [{"weight": 50}, {"weight": 10}]}),
     ["spec.rollout.steps", "rollout.steps: list the steps by increasing weight"]),
    ("rollout-repeated-weight",
     _set("spec.rollout", {"steps": [{"weight": 10}, {"weight": 10}]}),
     ["spec.rollout.steps", "rollout.steps: each step needs a different weight"]),
    ("rollout-weight-zero", _set("spec.rollout", {"steps": [{"weight": 0}]}),
     ["spec.rollout.steps[0].weight", "should be greater than or equal to 1"]),
    ("rollout-weight-hundred", _set("spec.rollout", {"steps": [{"weight": 10}, {"weight": 100}]}),
     ["spec.rollout.steps[1].weight", "should be less than or equal to 99"]),
    ("rollout-pause-below-ten", _set("spec.rollout", {"steps": [{"weight": 10,
                                                                "pauseSeconds": 5}]}),
     ["spec.rollout.steps[0].pauseSeconds", "should be greater than or equal to 10"]),
    ("rollout-waves-miss-a-pool-region", _set("spec.rollout", {"waves": [["eu-west-1"]]}),
     ["spec.rollout.waves", "rollout.waves must have every pool's region in exactly one wave: "
      "add a missing region to a wave"]),
    ("rollout-waves-unknown-region",
     _set("spec.rollout", {"waves": [["eu-west-1"], ["eu-central-1", "us-east-1"]]}),
     ["spec.rollout.waves", "rollout.waves names a region no pool runs in: remove it from the "
      "waves, or add a pool in that region"]),
    ("rollout-region-in-two-waves",
     _set("spec.rollout", {"waves": [["eu-west-1"], ["eu-central-1", "eu-west-1"]]}),
     ["spec.rollout.waves", "rollout.waves must have every pool's region in exactly one wave",
      "keep a repeated region in one wave only"]),
    ("rollout-region-twice-in-a-wave",
     _set("spec.rollout", {"waves": [["eu-west-1", "eu-west-1"], ["eu-central-1"]]}),
     ['.spec.rollout.waves[0]: duplicate entries for key [="eu-west-1"]']),
    ("rollout-golden-prompt-and-messages",
     _set("spec.rollout", {"gates": {"goldenPrompts": [{**_PROMPT, "messages": _MESSAGES}]}}),
     ["spec.rollout.gates.goldenPrompts[0]",
      "a golden prompt takes either prompt or messages, not both"]),
    ("rollout-golden-prompt-neither",
     _set("spec.rollout", {"gates": {"goldenPrompts": [{"name": "empty", "checks": {}}]}}),
     ["spec.rollout.gates.goldenPrompts[0]",
      "a golden prompt takes either prompt or messages, not both"]),
    ("rollout-golden-prompt-names-repeated",
     _set("spec.rollout", {"gates": {"goldenPrompts": [_PROMPT, _PROMPT]}}),
     ['.spec.rollout.gates.goldenPrompts: duplicate entries for key [name="capital"]']),
    ("rollout-promote-not-a-revision", _set("spec.rollout", {"promote": "Rev-1"}),
     ["spec.rollout.promote", "should match '^[a-z0-9]{1,32}$'"]),
]  # fmt: skip

# (id, mutation, substrings the API server's refusal must contain)
REFUSED: list[tuple[str, Mutation, list[str]]] = [
    ("min-above-max", _set(f"{POOL0}.replicas", {"min": 5, "max": 2}),
     ["replicas.min must be <= replicas.max"]),
    ("duplicate-pool-names", _set("spec.pools.1.name", "h100-dub"),
     ['.spec.pools: duplicate entries for key [name="h100-dub"]']),
    ("name-too-long", _set(f"{POOL0}.name", "p" * 60), ["at most 63 characters"]),
    ("pool-name-not-dns", _set(f"{POOL0}.name", "H100_Dub"), ["spec.pools[0].name"]),
    ("nvidia-with-neuron-type", _set(f"{POOL0}.accelerator.type", "inf2"),
     ["nvidia accelerator type must be one of"]),
    ("neuron-with-gpu-type", _set("spec.pools.1.accelerator.type", "H100"),
     ["neuron accelerator type must be"]),
    ("zero-accelerators", _set(f"{POOL0}.accelerator.count", 0),
     ["spec.pools[0].accelerator.count"]),
    ("negative-replicas", _set(f"{POOL0}.replicas.min", -1), ["spec.pools[0].replicas.min"]),
    ("gpu-mem-above-one", _set("spec.engine.args.gpuMemoryUtilization", 1.5),
     ["spec.engine.args.gpuMemoryUtilization"]),
    ("gpu-mem-zero", _set("spec.engine.args.gpuMemoryUtilization", 0),
     ["spec.engine.args.gpuMemoryUtilization"]),
    ("unknown-uri-scheme", _set("spec.model.uri", "ftp://models/llama"), ["spec.model.uri"]),
    ("model-name-missing", _set("spec.model.name", _DELETE), ["spec.model.name", "Required"]),
    ("unknown-accelerator-kind", _set(f"{POOL0}.accelerator.kind", "tpu"),
     ["spec.pools[0].accelerator.kind", "Unsupported value"]),
    ("tp-not-gpu-count", _set(f"{POOL0}.engine", {"args": {"tensorParallelSize": 4}}),
     ["tensorParallelSize must equal accelerator.count"]),
    ("s3-without-credentials", _set("spec.model.uri", "s3://bucket/llama"),
     ["an s3:// model needs credentialsSecretRef"]),
    ("extra-args-override-port", _set("spec.engine.extraArgs", ["--port=9000"]),
     ["extraArgs must not set --port"]),
    ("token-in-plain-env", _set("spec.engine.env", [{"name": "HF_TOKEN", "value": "hf_x"}]),
     ["put credentials in model.credentialsSecretRef"]),
    ("lowercase-jurisdiction", _set("spec.residency.jurisdictions", ["eu"]),
     ["spec.residency.jurisdictions[0]"]),
    ("no-pools", _set("spec.pools", []), ["spec.pools"]),
    ("unknown-field", _set("spec.engine.args.maxBatch", 3),
     [".spec.engine.args.maxBatch: field not declared in schema"]),
    ("gpu-memory-on-neuron", _set("spec.pools.1.engine.args.gpuMemoryUtilization", 0.9),
     ["gpuMemoryUtilization does not apply to neuron pools"]),
    ("trn1-with-two-devices", _set("spec.pools.1.accelerator", {"kind": "neuron",
                                                                "type": "trn1", "count": 2}),
     ["a trn1/trn1n replica takes 1, 4, 8 or 16 Neuron devices"]),
    ("s3-model-on-neuron", _set("spec.model", {"name": "llama", "uri": "s3://models/llama",
                                               "credentialsSecretRef": {"name": "aws"}}),
     ["an s3:// model cannot be served by neuron pools", "use hf:// or a pvc://"]),
    ("kv-cache-dtype-unknown-to-vllm", _set("spec.engine.args.kvCacheDtype", "int8"),
     ["spec.engine.args.kvCacheDtype", "Unsupported value"]),
    ("quantization-unknown-to-vllm", _set("spec.engine.args.quantization", "gguf"),
     ["spec.engine.args.quantization", "Unsupported value"]),
    ("neurondevice-in-resources", _set(f"{POOL0}.resources",
                                       {"requests": {"aws.amazon.com/neurondevice": "1"}}),
     ["accelerator resources come from pool.accelerator"]),
    ("autoscaling-unknown-policy", _set("spec.autoscaling", {"policy": "eager"}),
     ["spec.autoscaling.policy", "Unsupported value"]),
    ("autoscaling-external-but-off", _set("spec.autoscaling", {"policy": "off",
                                                               "mode": "external"}),
     ["mode external publishes the autoscaler's desired count"]),
    ("autoscaling-down-window-below-up", _set("spec.autoscaling", {
        "scaleUp": {"stabilizationSeconds": 600}, "scaleDown": {"stabilizationSeconds": 60}}),
     ["scaleDown.stabilizationSeconds must be >= scaleUp.stabilizationSeconds"]),
    ("autoscaling-negative-cooldown", _set("spec.autoscaling",
                                           {"scaleDown": {"cooldownSeconds": -1}}),
     ["spec.autoscaling.scaleDown.cooldownSeconds"]),
    ("autoscaling-kv-target-above-one", _set("spec.autoscaling",
                                             {"targets": {"kvCacheUsage": 1.5}}),
     ["spec.autoscaling.targets.kvCacheUsage"]),
    ("autoscaling-zero-step", _set("spec.autoscaling", {"scaleUp": {"maxStepReplicas": 0}}),
     ["spec.autoscaling.scaleUp.maxStepReplicas"]),
    *ROLLOUT_REFUSED,
]  # fmt: skip


@pytest.mark.parametrize(("mutation", "expected"), [(m, e) for _, m, e in REFUSED],
                         ids=[case_id for case_id, _, _ in REFUSED])  # fmt: skip
def test_api_server_refuses_invalid_factory(
    operator_cluster: KubectlCluster, namespace: str, mutation: Mutation, expected: list[str]
) -> None:
    obj = factory()
    mutation(obj)
    done = operator_cluster.run("apply", "--server-side", "-n", namespace, "-f", "-",
                                input=as_json(obj))  # fmt: skip
    assert done.returncode != 0, "the API server accepted an invalid factory"
    for text in expected:
        assert text in done.stderr, done.stderr
    assert operator_cluster.kubectl("get", "inferencefactories", "-n", namespace, "-o",
                                    "name") == ""  # fmt: skip


OPERATOR_ONLY = [
    ("unknown-region", _set(f"{POOL0}.region", "mars-north-1"), "UnknownRegion", "h100-dub"),
    ("outside-residency", _set(f"{POOL0}.region", "us-east-1"), "ResidencyViolation", "h100-dub"),
]  # fmt: skip


@pytest.mark.parametrize(("mutation", "reason", "pool"), [c[1:] for c in OPERATOR_ONLY],
                         ids=[c[0] for c in OPERATOR_ONLY])  # fmt: skip
def test_operator_reports_what_only_it_can_know(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator,
    mutation: Mutation, reason: str, pool: str,
) -> None:  # fmt: skip
    obj = factory()
    obj["spec"]["pools"] = copy.deepcopy(obj["spec"]["pools"][:1])
    mutation(obj)
    operator_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(obj))
    cond = wait_condition(operator_cluster, namespace, "llama", "Ready", "False", reason)
    assert pool in cond["message"]
    assert operator_cluster.kubectl("get", "deployments", "-n", namespace, "-o", "name") == ""


def test_pool_needing_more_accelerators_than_any_node_is_degraded(
    operator_cluster: KubectlCluster, namespace: str, operator: RunningOperator
) -> None:
    obj = factory()
    obj["spec"]["pools"] = [copy.deepcopy(obj["spec"]["pools"][0])]
    # 16 GPUs per replica: no p5.48xlarge (8 x H100) can hold one.
    obj["spec"]["pools"][0]["accelerator"]["count"] = 16
    operator_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=as_json(obj))
    cond = wait_condition(operator_cluster, namespace, "llama", "Degraded", "True",
                          "InsufficientAccelerators")  # fmt: skip
    assert "nvidia.com/gpu" in cond["message"] and "h100-dub" in cond["message"]


def test_api_server_refuses_an_unknown_node_label_scheme(operator_cluster: KubectlCluster) -> None:
    region = {"apiVersion": "inference.factory.dev/v1alpha1", "kind": "FleetRegion",
              "metadata": {"name": "validation-scheme"},
              "spec": {"jurisdiction": "EU", "nodeLabelScheme": "nfd"}}  # fmt: skip
    done = operator_cluster.run("apply", "--server-side", "-f", "-", input=as_json(region))
    assert done.returncode != 0, "the API server accepted an unknown nodeLabelScheme"
    assert "spec.nodeLabelScheme" in done.stderr and "Unsupported value" in done.stderr
    assert "gke" in done.stderr and "instance-type" in done.stderr  # the allowed values


ROLLOUT_ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("empty", {}),
    ("rolling", {"strategy": "Rolling"}),
    ("everything", {
        "waves": [["eu-west-1"], ["eu-central-1"]], "waveSize": 1,
        "steps": [{"weight": 5, "replicas": 1, "pauseSeconds": 10}, {"weight": 50},
                  {"weight": 99, "pauseSeconds": 600}],
        "progressDeadlineSeconds": 1800, "paused": True, "promote": "0123abcdef",
        "gates": {
            "goldenPrompts": [
                _PROMPT,
                {"name": "point", "messages": [{"role": "system", "content": "JSON only"},
                                               *_MESSAGES],
                 "maxTokens": 32,
                 "checks": {"jsonSchema": {"type": "object", "required": ["x"],
                                           "properties": {"x": {"type": "number"}}},
                            "mustNotContain": ["Berlin"], "similarToStable": 0.9}},
            ],
            "goldenPromptsFrom": {"name": "prompts"},
            "slo": {"enabled": False, "maxTtftP95Ratio": 2, "minRequests": 5},
        },
    }),
    ("one-wave", {"waves": [["eu-central-1", "eu-west-1"]]}),
]  # fmt: skip


@pytest.mark.parametrize("rollout", [r for _, r in ROLLOUT_ACCEPTED],
                         ids=[case_id for case_id, _ in ROLLOUT_ACCEPTED])  # fmt: skip
def test_api_server_accepts_a_valid_rollout(
    operator_cluster: KubectlCluster, namespace: str, rollout: dict[str, Any]
) -> None:
    obj = factory(rollout=rollout)
    done = operator_cluster.run("apply", "--server-side", "--dry-run=server", "-n", namespace,
                                "-o", "json", "-f", "-", input=as_json(obj))  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Stored as given: nothing pruned (jsonSchema keeps its unknown fields), no defaults added.
    assert json.loads(done.stdout)["spec"]["rollout"] == rollout


def test_api_server_accepts_s3_through_a_service_account(
    operator_cluster: KubectlCluster, namespace: str
) -> None:
    obj = factory()
    obj["spec"]["pools"] = obj["spec"]["pools"][:1]  # nvidia only: Neuron cannot read s3://
    obj["spec"]["model"] = {"name": "llama", "uri": "s3://models/llama"}
    obj["spec"]["serviceAccountName"] = "llama-s3-reader"
    done = operator_cluster.run("apply", "--server-side", "--dry-run=server", "-n", namespace,
                                "-f", "-", input=as_json(obj))  # fmt: skip
    assert done.returncode == 0, done.stderr
