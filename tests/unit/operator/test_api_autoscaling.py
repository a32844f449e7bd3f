"""spec.autoscaling: defaults in one place, spec over policy, the schema's bounds and the CEL
rules (evaluated with cel-python on the generated CRD), and the status memory round trip."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from conftest import factory, pool
from pydantic import ValidationError

from factory_operator.api import InferenceFactory
from factory_operator.api.autoscaling import (
    EXPECTED_STARTUP_SECONDS,
    POLICIES,
    Autoscaling,
    effective_autoscaling,
)
from factory_operator.api.crdgen import crd_objects


def _autoscaling_schema() -> dict[str, Any]:
    crd = crd_objects()["inferencefactories.inference.factory.dev.yaml"]
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root["properties"]["spec"]["properties"]["autoscaling"]  # type: ignore[no-any-return]


def _rule(fragment: str) -> str:
    rules = [
        r["rule"]
        for r in _autoscaling_schema()["x-kubernetes-validations"]
        if fragment in r["message"]
    ]
    assert len(rules) == 1, fragment
    return rules[0]


def _eval(rule: str, value: Any) -> bool:
    env = celpy.Environment()
    return bool(env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(value)}))


def test_absent_settings_are_the_balanced_policy_with_startup_by_accelerator() -> None:
    nvidia = effective_autoscaling(None, "nvidia")
    neuron = effective_autoscaling(None, "neuron")
    assert nvidia.policy == "balanced" and nvidia.mode == "operator"
    assert nvidia.expected_startup_seconds == EXPECTED_STARTUP_SECONDS["nvidia"] == 240
    assert neuron.expected_startup_seconds == EXPECTED_STARTUP_SECONDS["neuron"] == 900
    assert nvidia.down_stabilization_seconds > nvidia.up_stabilization_seconds


def test_a_field_set_in_the_spec_wins_over_its_policy() -> None:
    spec = Autoscaling.model_validate(
        {
            "policy": "conservative",
            "targets": {"ttftP95Ms": 500, "kvCacheUsage": 0.5},
            "scaleDown": {"idleSeconds": 0},
            "expectedStartupSeconds": 30,
        }
    )
    got = spec.effective("neuron")
    assert got.ttft_p95_ms == 500 and got.kv_cache_usage == 0.5 and got.idle_seconds == 0
    assert got.expected_startup_seconds == 30
    base = POLICIES["conservative"]
    assert got.down_stabilization_seconds == base.down_stabilization_seconds
    assert got.up_max_step_replicas == base.up_max_step_replicas


@pytest.mark.parametrize("policy", ["balanced", "aggressive", "conservative"])
def test_policy_defaults_are_documented_in_the_crd(policy: str) -> None:
    described = _autoscaling_schema()["properties"]["policy"]["description"]
    p = POLICIES[policy]  # type: ignore[index]
    assert f"{policy}: targets batchUtilization {p.batch_utilization}" in described
    assert f"scaleDown stabilization {p.down_stabilization_seconds} s" in described


@pytest.mark.parametrize(
    "body",
    [
        {"policy": "fast"},
        {"mode": "keda"},
        {"scaleDown": {"cooldownSeconds": -1}},
        {"scaleUp": {"stabilizationSeconds": -5}},
        {"scaleUp": {"maxStepReplicas": 0}},
        {"targets": {"kvCacheUsage": 0}},
        {"targets": {"kvCacheUsage": 1.5}},
        {"targets": {"batchUtilization": 0}},
        {"targets": {"ttftP95Ms": 0}},
        {"expectedStartupSeconds": -1},
        {"targets": {"queueDepth": 3}},
    ],
)
def test_the_models_refuse_out_of_range_settings(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Autoscaling.model_validate(body)


def test_the_crd_schema_bounds_the_windows() -> None:
    props = _autoscaling_schema()["properties"]
    down = props["scaleDown"]["properties"]
    assert down["stabilizationSeconds"]["minimum"] == 0
    assert down["cooldownSeconds"]["minimum"] == 0
    assert props["scaleUp"]["properties"]["maxStepReplicas"]["minimum"] == 1
    assert props["policy"]["enum"] == ["balanced", "aggressive", "conservative", "off"]
    kv = props["targets"]["properties"]["kvCacheUsage"]
    assert kv["exclusiveMinimum"] is True and kv["maximum"] == 1


CEL_CASES = [
    ("mode external publishes", {"mode": "external"}, True),
    ("mode external publishes", {"mode": "external", "policy": "balanced"}, True),
    ("mode external publishes", {"mode": "external", "policy": "off"}, False),
    ("mode external publishes", {"mode": "operator", "policy": "off"}, True),
    ("scaleDown.stabilizationSeconds must be >=", {}, True),
    (
        "scaleDown.stabilizationSeconds must be >=",
        {"scaleUp": {"stabilizationSeconds": 60}, "scaleDown": {"stabilizationSeconds": 300}},
        True,
    ),
    (
        "scaleDown.stabilizationSeconds must be >=",
        {"scaleUp": {"stabilizationSeconds": 600}, "scaleDown": {"stabilizationSeconds": 300}},
        False,
    ),
    (
        "scaleDown.stabilizationSeconds must be >=",
        {"scaleUp": {"stabilizationSeconds": 600}, "scaleDown": {"cooldownSeconds": 0}},
        True,
    ),
]


@pytest.mark.parametrize(("fragment", "value", "accepted"), CEL_CASES)
def test_cel_rules(fragment: str, value: dict[str, Any], accepted: bool) -> None:
    assert _eval(_rule(fragment), value) is accepted


def test_a_factory_carries_autoscaling_and_pool_status_memory() -> None:
    status = {
        "pools": [
            {
                "name": "eu",
                "region": "eu-west-1",
                "state": "Running",
                "desiredReplicas": 2,
                "readyReplicas": 2,
                "autoscaling": {
                    "desiredReplicas": 3,
                    "currentReplicas": 2,
                    "reason": "ScaleUp",
                    "lastScaleDirection": "Up",
                    "recommendations": [{"time": "2026-01-01T00:00:00Z", "replicas": 3}],
                },
            }
        ]
    }
    body = factory([pool("eu", "eu-west-1", replicas=1)], status=status).to_wire()
    body["spec"]["autoscaling"] = {"policy": "aggressive", "scaleDown": {"idleSeconds": 60}}
    f = InferenceFactory.model_validate(body)
    assert f.spec.autoscaling is not None
    assert f.spec.autoscaling.effective("nvidia").idle_seconds == 60
    assert f.status is not None and f.status.pools[0].autoscaling is not None
    assert f.status.pools[0].autoscaling.recommendations[0].replicas == 3
