"""spec.rollout, status.rollout and status.pools[].canary: defaults, wire names, the models'
refusals, the generated schema (structural, bounded, printer columns) and its CEL rules
evaluated with cel-python. The same rules run on a real API server in
tests/integration/operator/test_validation.py."""

from __future__ import annotations

import itertools
from typing import Any

import celpy
import pytest
from celpy import celtypes
from conftest import factory, pool
from pydantic import ValidationError

from factory_operator.api.common import ApiModel
from factory_operator.api.crdgen import crd_objects
from factory_operator.api.factory import InferenceFactoryStatus, PoolStatus
from factory_operator.api.rollout import (
    DEFAULT_STEPS,
    ConfigMapPrompts,
    GoldenPrompt,
    PoolCanaryStatus,
    Rollout,
    RolloutGates,
    RolloutStatus,
    RolloutStep,
    SloGates,
)

CRD = "inferencefactories.inference.factory.dev.yaml"
TWO_REGIONS = [pool("h100-dub", "eu-west-1"), pool("h100-fra", "eu-central-1")]


def _root() -> dict[str, Any]:
    version = crd_objects()[CRD]["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _spec() -> dict[str, Any]:
    return _root()["properties"]["spec"]  # type: ignore[no-any-return]


def _rollout_schema() -> dict[str, Any]:
    return _spec()["properties"]["rollout"]  # type: ignore[no-any-return]


def _is_sorted(items: celtypes.ListType) -> celtypes.BoolType:
    """The Kubernetes CEL list library's ``isSorted()``, which cel-python does not have."""
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(items)))


def _eval(expression: str, value: Any) -> Any:
    env = celpy.Environment()
    program = env.program(env.compile(expression), functions={"isSorted": _is_sorted})
    return program.evaluate({"self": celpy.json_to_cel(value)})


def _validation(node: dict[str, Any], fragment: str) -> dict[str, str]:
    found = [r for r in node["x-kubernetes-validations"] if fragment in r["message"]]
    assert len(found) == 1, fragment
    return found[0]


# --- defaults and wire names ------------------------------------------------------------


def test_empty_rollout_is_a_canary_with_the_documented_defaults() -> None:
    rollout = Rollout.model_validate({})
    assert rollout == Rollout()
    assert rollout.strategy == "Canary" and rollout.waves is None and rollout.wave_size == 2
    assert rollout.steps is None and not rollout.paused and rollout.promote is None
    assert rollout.progress_deadline_seconds == 600
    assert [(s.weight, s.pause_seconds, s.replicas) for s in rollout.step_list()] == [
        (10, 60, None),
        (50, 60, None),
    ]
    assert [(s.weight, s.pause_seconds) for s in rollout.step_list()] == list(DEFAULT_STEPS)
    assert rollout.gates.golden_prompts == [] and rollout.gates.golden_prompts_from is None
    slo = rollout.gates.slo
    assert slo.enabled and slo.min_requests == 20
    assert (slo.max_error_ratio_increase, slo.max_ttft_p95_ratio) == (0.01, 1.5)
    assert (slo.max_itl_p95_ratio, slo.min_throughput_ratio) == (1.5, 0.7)
    assert RolloutStatus().phase == "Stable" and RolloutStatus().summary == ""


def test_step_list_keeps_the_given_steps() -> None:
    rollout = Rollout.model_validate(
        {"steps": [{"weight": 5, "replicas": 1}, {"weight": 25, "pauseSeconds": 300}]}
    )
    assert rollout.step_list() == [
        RolloutStep(weight=5, replicas=1),
        RolloutStep(weight=25, pause_seconds=300),
    ]
    assert rollout.step_list()[0].pause_seconds == 60


def test_the_absent_rollout_of_a_factory_is_none() -> None:
    assert factory([pool("a", "eu-west-1")]).spec.rollout is None


WIRE_ROLLOUT: dict[str, Any] = {
    "strategy": "Canary",
    "waves": [["eu-west-1"], ["eu-central-1"]],
    "waveSize": 1,
    "steps": [{"weight": 10, "replicas": 2, "pauseSeconds": 120}, {"weight": 50}],
    "progressDeadlineSeconds": 900,
    "paused": False,
    "promote": "0123abcdef",
    "gates": {
        "goldenPrompts": [
            {
                "name": "capital",
                "prompt": "Capital of France?",
                "maxTokens": 16,
                "checks": {
                    "regex": "Paris",
                    "maxLength": 200,
                    "mustNotContain": ["Berlin"],
                    "similarToStable": 0.8,
                },
            },
            {
                "name": "json",
                "messages": [{"role": "system", "content": "JSON only"},
                             {"role": "user", "content": "A point"}],
                "checks": {"jsonSchema": {"type": "object", "required": ["x"],
                                          "properties": {"x": {"type": "number"}}}},
            },
        ],
        "goldenPromptsFrom": {"name": "prompts", "key": "golden.yaml"},
        "slo": {
            "enabled": True,
            "maxErrorRatioIncrease": 0.02,
            "maxTtftP95Ratio": 2.0,
            "maxItlP95Ratio": 1.2,
            "minThroughputRatio": 0.5,
            "minRequests": 50,
        },
    },
}  # fmt: skip


def test_wire_names_are_camel_case_and_round_trip() -> None:
    rollout = Rollout.model_validate(WIRE_ROLLOUT)
    assert rollout.model_dump(by_alias=True, exclude_unset=True, mode="json") == WIRE_ROLLOUT
    assert Rollout.model_validate(rollout.to_wire()) == rollout
    assert rollout.progress_deadline_seconds == 900 and rollout.steps
    assert rollout.steps[0].pause_seconds == 120
    checks = rollout.gates.golden_prompts[1].checks
    assert checks.json_schema == {"type": "object", "required": ["x"],
                                  "properties": {"x": {"type": "number"}}}  # fmt: skip
    assert rollout.gates.slo.max_ttft_p95_ratio == 2.0


def test_status_wire_names_are_camel_case() -> None:
    status = RolloutStatus.model_validate(
        {
            "revision": "abc123def0",
            "stableRevision": "0123456789",
            "failedRevision": "fedcba9876",
            "phase": "Progressing",
            "wave": 0,
            "step": 1,
            "regions": ["eu-west-1"],
            "stepEnteredAt": "2026-01-01T00:00:00Z",
            "stepStartedAt": "2026-01-01T00:01:00Z",
            "startedAt": "2026-01-01T00:00:00Z",
            "message": "step 2 of 2",
            "gates": [{"check": "TtftP95", "pool": "h100-dub", "passed": True, "value": 0.2,
                       "baseline": 0.18, "threshold": 1.5, "message": "ok"}],
            "summary": "wave 1/2 step 2/2 weight 50",
        }
    )  # fmt: skip
    wire = status.to_wire()
    assert {"stableRevision", "failedRevision", "stepEnteredAt", "stepStartedAt",
            "startedAt"} <= wire.keys()  # fmt: skip
    canary = PoolCanaryStatus(revision="abc123def0", weight=10, desired_replicas=1)
    assert canary.to_wire() == {"revision": "abc123def0", "weight": 10, "desiredReplicas": 1,
                                "readyReplicas": 0}  # fmt: skip
    pool_status = PoolStatus.model_validate(
        {"name": "a", "region": "eu-west-1", "state": "Running", "desiredReplicas": 1,
         "readyReplicas": 1, "canary": canary.to_wire()}
    )  # fmt: skip
    assert pool_status.canary == canary
    whole = InferenceFactoryStatus.model_validate({"rollout": wire})
    assert whole.rollout == status


def test_the_schema_uses_the_models_wire_names() -> None:
    props = _rollout_schema()["properties"]
    assert set(props) == {"strategy", "waves", "waveSize", "steps", "progressDeadlineSeconds",
                          "paused", "promote", "gates"}  # fmt: skip
    assert set(props["steps"]["items"]["properties"]) == {"weight", "replicas", "pauseSeconds"}
    gates = props["gates"]["properties"]
    assert set(gates) == {"goldenPrompts", "goldenPromptsFrom", "slo"}
    checks = gates["goldenPrompts"]["items"]["properties"]["checks"]["properties"]
    assert set(checks) == {"equals", "regex", "jsonSchema", "maxLength", "mustNotContain",
                           "similarToStable"}  # fmt: skip
    status = _root()["properties"]["status"]["properties"]
    assert "stepEnteredAt" in status["rollout"]["properties"]
    canary = status["pools"]["items"]["properties"]["canary"]["properties"]
    assert set(canary) == {"revision", "weight", "desiredReplicas", "readyReplicas"}


# --- the models refuse bad input ----------------------------------------------------------

GOLDEN = {"name": "g", "prompt": "hi", "checks": {}}

BAD_ROLLOUTS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-field", {"canary": True}, "Extra inputs are not permitted"),
    ("unknown-strategy", {"strategy": "BlueGreen"}, "strategy"),
    ("weight-zero", {"steps": [{"weight": 0}]}, "weight"),
    ("weight-hundred", {"steps": [{"weight": 100}]}, "weight"),
    ("pause-below-ten", {"steps": [{"weight": 10, "pauseSeconds": 5}]}, "pauseSeconds"),
    ("no-steps", {"steps": []}, "steps"),
    ("too-many-steps", {"steps": [{"weight": w} for w in range(1, 10)]}, "steps"),
    ("weights-decrease", {"steps": [{"weight": 50}, {"weight": 10}]},
     "list the steps by increasing weight"),
    ("weight-repeated", {"steps": [{"weight": 10}, {"weight": 10}]},
     "each step needs a different weight"),
    ("promote-not-a-revision", {"promote": "ABC-1"}, "promote"),
    ("deadline-below-a-minute", {"progressDeadlineSeconds": 30}, "progressDeadlineSeconds"),
    ("empty-wave", {"waves": [[]]}, "waves"),
    ("no-waves", {"waves": []}, "waves"),
    ("wave-region-not-a-label", {"waves": [["EU_West"]]}, "waves"),
    ("prompt-and-messages", {"gates": {"goldenPrompts": [
        {**GOLDEN, "messages": [{"role": "user", "content": "hi"}]}]}},
     "either prompt or messages"),
    ("neither-prompt-nor-messages", {"gates": {"goldenPrompts": [
        {"name": "g", "checks": {}}]}}, "either prompt or messages"),
    ("empty-messages", {"gates": {"goldenPrompts": [
        {"name": "g", "messages": [], "checks": {}}]}}, "messages"),
    ("unknown-role", {"gates": {"goldenPrompts": [
        {"name": "g", "messages": [{"role": "tool", "content": "x"}], "checks": {}}]}}, "role"),
    ("similarity-above-one", {"gates": {"goldenPrompts": [
        {**GOLDEN, "checks": {"similarToStable": 1.5}}]}}, "similarToStable"),
    ("ttft-ratio-below-one", {"gates": {"slo": {"maxTtftP95Ratio": 0.5}}}, "maxTtftP95Ratio"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), [(v, e) for _, v, e in BAD_ROLLOUTS],
                         ids=[i for i, _, _ in BAD_ROLLOUTS])  # fmt: skip
def test_the_model_refuses(value: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        Rollout.model_validate(value)


def test_a_configmap_prompt_is_checked_by_the_model_alone() -> None:
    # goldenPromptsFrom's prompts never meet the CRD's CEL rules: the model holds the rule.
    assert GoldenPrompt.model_validate(GOLDEN).prompt == "hi"
    with pytest.raises(ValidationError, match="either prompt or messages"):
        GoldenPrompt.model_validate({"name": "g", "checks": {}})


@pytest.mark.parametrize(
    ("waves", "expected"),
    [
        ([["eu-west-1"], ["eu-central-1"]], None),
        ([["eu-central-1", "eu-west-1"]], None),
        ([["eu-west-1"]], "every pool's region in exactly one wave"),
        ([["eu-west-1"], ["eu-central-1", "eu-west-1"]], "every pool's region in exactly one"),
        ([["eu-west-1"], ["eu-central-1", "us-east-1"]], "names a region no pool runs in"),
    ],
)
def test_the_spec_model_checks_waves_against_the_pools(
    waves: list[list[str]], expected: str | None
) -> None:
    def build() -> Any:
        made = factory(TWO_REGIONS).to_wire()
        made["spec"]["rollout"] = {"waves": waves}
        return type(factory(TWO_REGIONS)).model_validate(made)

    if expected is None:
        assert build().spec.rollout.waves == waves
    else:
        with pytest.raises(ValidationError, match=expected):
            build()


# --- the generated schema -------------------------------------------------------------------


def _walk(node: dict[str, Any], path: str) -> Any:
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("path", ["spec.rollout", "status.rollout", "status.pools[].canary"])
def test_the_rollout_schema_is_typed_and_bounded_for_cel(path: str) -> None:
    node = _root()
    for part in path.split("."):
        node = node["properties"][part.removesuffix("[]")]
        if part.endswith("[]"):
            node = node["items"]
    for where, sub in _walk(node, path):
        assert "type" in sub, f"{where}: no type (not structural)"
        if sub["type"] == "string" and "enum" not in sub and where.startswith("spec"):
            assert "maxLength" in sub, f"{where}: CEL cost needs maxLength"
        if sub["type"] == "array":
            assert "maxItems" in sub, f"{where}: CEL cost needs maxItems"
        if sub["type"] == "object" and "properties" not in sub:
            assert sub.get("x-kubernetes-preserve-unknown-fields"), where


def test_free_form_and_keyed_lists() -> None:
    props = _rollout_schema()["properties"]
    prompts = props["gates"]["properties"]["goldenPrompts"]
    assert prompts["x-kubernetes-list-type"] == "map"
    assert prompts["x-kubernetes-list-map-keys"] == ["name"]
    json_schema = prompts["items"]["properties"]["checks"]["properties"]["jsonSchema"]
    assert json_schema["type"] == "object"
    assert json_schema["x-kubernetes-preserve-unknown-fields"] is True
    assert props["waves"]["items"]["x-kubernetes-list-type"] == "set"
    assert props["waves"]["items"]["items"]["type"] == "string"


def test_printer_columns_show_revision_and_rollout() -> None:
    columns = crd_objects()[CRD]["spec"]["versions"][0]["additionalPrinterColumns"]
    names = [c["name"] for c in columns]
    assert names == ["Model", "Pools", "Jurisdictions", "USD/Mtok", "Revision", "Rollout",
                     "Ready", "Reason", "Age"]  # fmt: skip
    by_name = {c["name"]: c for c in columns}
    assert by_name["Revision"]["jsonPath"] == ".status.rollout.revision"
    assert by_name["Revision"]["priority"] == 1  # -o wide: a hash is for the curious
    assert by_name["Rollout"]["jsonPath"] == ".status.rollout.summary"
    assert by_name["Rollout"].get("priority", 0) == 0
    default = [c["name"] for c in columns if not c.get("priority")]
    assert default == ["Model", "Pools", "Jurisdictions", "Rollout", "Ready", "Age"]


def test_every_rollout_field_is_described() -> None:
    for where, sub in _walk(_rollout_schema(), "spec.rollout"):
        if not where.endswith("[]"):
            assert sub.get("description"), f"{where} has no description"


@pytest.mark.parametrize(
    "model", [Rollout, RolloutStep, GoldenPrompt, ConfigMapPrompts, RolloutGates, SloGates]
)
def test_descriptions_state_the_defaults(model: type[ApiModel]) -> None:
    # The CRD carries no defaults (the operator applies them): kubectl explain shows only
    # the descriptions, so a scalar default must be written there.
    for name, field in model.model_fields.items():
        if field.is_required() or field.default is None or field.default_factory is not None:
            continue
        assert "default" in (field.description or "").lower(), f"{model.__name__}.{name}"


# --- CEL rules, with cel-python --------------------------------------------------------------

STEP_CASES = [
    ({}, True),
    ({"steps": [{"weight": 10}]}, True),
    ({"steps": [{"weight": 10}, {"weight": 50}, {"weight": 90}]}, True),
    ({"steps": [{"weight": 50}, {"weight": 10}]}, False),
    ({"steps": [{"weight": 10}, {"weight": 10}]}, False),
]


@pytest.mark.parametrize(("value", "allowed"), STEP_CASES)
def test_step_rules(value: dict[str, Any], allowed: bool) -> None:
    node = _rollout_schema()
    rules = [_validation(node, "different weight"), _validation(node, "increasing weight")]
    assert all(bool(_eval(r["rule"], value)) for r in rules) is allowed


def test_golden_prompt_rule() -> None:
    items = _rollout_schema()["properties"]["gates"]["properties"]["goldenPrompts"]["items"]
    rule = _validation(items, "either prompt or messages")["rule"]
    assert _eval(rule, {"prompt": "hi"}) and _eval(rule, {"messages": [{}]})
    assert not _eval(rule, {"prompt": "hi", "messages": [{}]}) and not _eval(rule, {})


def _spec_with(waves: list[list[str]] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"pools": [{"name": "h100-dub", "region": "eu-west-1"},
                                      {"name": "inf2-fra", "region": "eu-central-1"},
                                      {"name": "l4-dub", "region": "eu-west-1"}]}  # fmt: skip
    if waves is not None:
        spec["rollout"] = {"waves": waves}
    return spec


WAVE_CASES: list[tuple[list[list[str]] | None, str | None]] = [
    (None, None),
    ([["eu-west-1"], ["eu-central-1"]], None),
    ([["eu-central-1", "eu-west-1"]], None),
    ([["eu-west-1"]], "every pool's region in exactly one wave: add a missing region"),
    ([["eu-west-1"], ["eu-central-1", "eu-west-1"]],
     "every pool's region in exactly one wave: add a missing region to a wave, keep a "
     "repeated region in one wave only"),
    ([["eu-west-1"], ["eu-central-1", "us-east-1"]],
     "rollout.waves names a region no pool runs in: remove it from the waves, or add a pool "
     "in that region"),
]  # fmt: skip


@pytest.mark.parametrize(("waves", "message"), WAVE_CASES)
def test_wave_rules(waves: list[list[str]] | None, message: str | None) -> None:
    value = _spec_with(waves)
    if waves is None:
        value["rollout"] = {}
    rules = [
        r for r in _spec()["x-kubernetes-validations"] if r.get("fieldPath") == ".rollout.waves"
    ]
    assert len(rules) == 2
    failed = [r["message"] for r in rules if not _eval(r["rule"], value)]
    if message is None:
        assert failed == []
    else:
        assert len(failed) == 1 and message in failed[0]
