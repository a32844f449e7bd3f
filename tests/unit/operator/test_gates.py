"""The rollout gates' pure judgements (plan/gates.py): every answer check passing, failing
and inconclusive; the SLO checks with their numbers, floors and fail-closed cases; golden
prompts read from a ConfigMap's YAML."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any

import pytest

from factory_operator.api.rollout import GateResult, GoldenPrompt, SloGates
from factory_operator.plan import gates as plan_gates
from factory_operator.plan.gates import (
    EXCERPT_CHARS,
    LATENCY_FLOOR_SECONDS,
    MAX_JUDGED_CHARS,
    MAX_MESSAGE,
    SLO_CHECKS,
    RevisionStats,
    check_answer,
    judge_slo,
    prompts_from_configmap,
)


def prompt(**checks: Any) -> GoldenPrompt:
    return GoldenPrompt.model_validate({"name": "capital", "prompt": "Capital of France?",
                                        "checks": checks})  # fmt: skip


def one(results: list[GateResult]) -> GateResult:
    assert len(results) == 1, results
    (result,) = results
    assert result.check == "GoldenPrompt" and result.pool == "west"
    assert "'capital'" in result.message
    return result


# --- answer checks ---------------------------------------------------------------------------


def test_equals() -> None:
    assert one(check_answer(prompt(equals="Paris"), "west", "Paris", None)).passed is True
    failed = one(check_answer(prompt(equals="Paris"), "west", "paris", None))
    assert failed.passed is False
    assert "equals" in failed.message and "'paris'" in failed.message


def test_regex_searches_anywhere() -> None:
    assert one(check_answer(prompt(regex=r"Par\w+"), "west", "It is Paris.", None)).passed
    failed = one(check_answer(prompt(regex=r"^Paris$"), "west", "It is Paris.", None))
    assert failed.passed is False and "does not match" in failed.message


def test_an_invalid_regex_is_a_failed_check_not_an_exception() -> None:
    result = one(check_answer(prompt(regex="(unclosed"), "west", "Paris", None))
    assert result.passed is False
    assert "invalid" in result.message and "(unclosed" in result.message


def test_a_catastrophic_regex_fails_within_its_timeout() -> None:
    started = time.monotonic()
    result = one(check_answer(prompt(regex=r"(a|aa)+$"), "west", "a" * 60 + "!", None))
    assert time.monotonic() - started < 5
    assert result.passed is False and "backtracking" in result.message


def test_json_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city"],
    }
    ok = one(check_answer(prompt(jsonSchema=schema), "west", '{"city": "Paris"}', None))
    assert ok.passed is True
    wrong = one(check_answer(prompt(jsonSchema=schema), "west", '{"population": "many"}', None))
    assert wrong.passed is False and "jsonSchema" in wrong.message
    not_json = one(check_answer(prompt(jsonSchema=schema), "west", "Paris, I think", None))
    assert not_json.passed is False and "not JSON" in not_json.message


def test_json_schema_is_draft_2020_12() -> None:
    # prefixItems is 2020-12's (draft 7 ignores it and would pass this answer).
    schema = {"type": "array", "prefixItems": [{"type": "integer"}]}
    assert one(check_answer(prompt(jsonSchema=schema), "west", "[1, 2]", None)).passed is True
    assert one(check_answer(prompt(jsonSchema=schema), "west", '["x"]', None)).passed is False


def test_an_invalid_schema_and_a_deep_answer_fail_without_raising() -> None:
    bad = one(check_answer(prompt(jsonSchema={"type": 12}), "west", "{}", None))
    assert bad.passed is False and "schema is invalid" in bad.message
    deep = "[" * 100_000 + "]" * 100_000  # over the judged length
    assert one(check_answer(prompt(jsonSchema={}), "west", deep, None)).passed is False
    nested = "[" * 10_000 + "]" * 10_000  # json's recursion limit
    assert one(check_answer(prompt(jsonSchema={}), "west", nested, None)).passed is False


def test_max_length_counts_characters() -> None:
    ok = one(check_answer(prompt(maxLength=5), "west", "Pàris", None))
    assert (ok.passed, ok.value, ok.threshold) == (True, 5.0, 5.0)
    long = one(check_answer(prompt(maxLength=5), "west", "Paris!", None))
    assert (long.passed, long.value) == (False, 6.0)


def test_must_not_contain() -> None:
    checks = prompt(mustNotContain=["As an AI", "sorry"])
    assert one(check_answer(checks, "west", "Paris", None)).passed is True
    failed = one(check_answer(checks, "west", "I am sorry, Paris", None))
    assert failed.passed is False and "'sorry'" in failed.message


def test_similar_to_stable() -> None:
    checks = prompt(similarToStable=0.8)
    same = one(check_answer(checks, "west", "The capital is Paris.", "The capital is Paris."))
    assert (same.passed, same.value, same.threshold) == (True, 1.0, 0.8)
    close = one(check_answer(checks, "west", "The capital is Paris!", "The capital is Paris."))
    assert close.passed is True and close.value == pytest.approx(20 / 21)
    far = one(check_answer(checks, "west", "Lyon", "The capital is Paris."))
    assert far.passed is False and far.value is not None and far.value < 0.8
    missing = one(check_answer(checks, "west", "Paris", None))
    assert missing.passed is None and "stable" in missing.message


def test_every_check_given_is_one_result_and_no_check_is_a_pass() -> None:
    checks = prompt(equals="Paris", regex="P", maxLength=10, mustNotContain=["x"],
                    similarToStable=0.5, jsonSchema={"type": "string"})  # fmt: skip
    results = check_answer(checks, "west", '"Paris"', '"Paris"')
    assert len(results) == 6
    assert [r.passed for r in results] == [False, True, True, True, True, True]
    (bare,) = check_answer(prompt(), "west", "anything", None)
    assert bare.passed is True


def test_messages_show_a_bounded_excerpt_of_the_answer() -> None:
    answer = "x" * 10_000
    result = one(check_answer(prompt(equals="Paris"), "west", answer, None))
    assert "x" * EXCERPT_CHARS in result.message and "x" * (EXCERPT_CHARS + 1) not in result.message
    assert "10000 chars" in result.message and len(result.message) <= MAX_MESSAGE
    huge_needle = prompt(mustNotContain=["y" * 1024], regex="z" * 1024, equals="e" * 8192)
    for result in check_answer(huge_needle, "west", "y" * 2000, None):
        assert len(result.message) <= MAX_MESSAGE


def test_answers_too_long_to_judge_fail_the_superlinear_checks() -> None:
    answer = "a" * (MAX_JUDGED_CHARS + 1)
    results = check_answer(prompt(regex="a", similarToStable=0.1), "west", answer, answer)
    assert [r.passed for r in results] == [False, False]


# --- SLOs ------------------------------------------------------------------------------------

SLO = SloGates()  # errors +1%, TTFT and ITL x1.5, throughput x0.7, 20 requests
STABLE = RevisionStats(attempts=1000, errors=5, ttft_p95=0.2, itl_p95=0.02, tokens=50_000,
                       stream_seconds=500)  # fmt: skip


def by_check(results: list[GateResult]) -> dict[str, GateResult]:
    assert [r.check for r in results] == list(SLO_CHECKS)
    assert all(r.pool == "west" for r in results)
    return {r.check: r for r in results}


def test_a_canary_like_the_stable_passes_every_slo() -> None:
    results = by_check(judge_slo(SLO, "west", STABLE, STABLE))
    assert all(r.passed is True for r in results.values())
    errors = results["ErrorRatio"]
    assert (errors.value, errors.baseline, errors.threshold) == (0.005, 0.005, pytest.approx(0.015))
    ttft = results["TtftP95"]
    assert (ttft.value, ttft.baseline, ttft.threshold) == (0.2, 0.2, pytest.approx(0.3))
    throughput = results["Throughput"]
    assert (throughput.value, throughput.baseline) == (100.0, 100.0)
    assert throughput.threshold == pytest.approx(70.0)


def test_error_ratio_increase() -> None:
    canary = RevisionStats(attempts=100, errors=2, ttft_p95=0.2, itl_p95=0.02)
    result = by_check(judge_slo(SLO, "west", canary, STABLE))["ErrorRatio"]
    assert result.passed is False and result.value == 0.02
    assert "2.00%" in result.message and "1.50%" in result.message
    at_the_limit = RevisionStats(attempts=1000, errors=15, ttft_p95=0.2)
    assert by_check(judge_slo(SLO, "west", at_the_limit, STABLE))["ErrorRatio"].passed


def test_latency_ratios() -> None:
    slow = RevisionStats(attempts=100, errors=0, ttft_p95=0.61, itl_p95=0.031)
    results = by_check(judge_slo(SLO, "west", slow, STABLE))
    ttft, itl = results["TtftP95"], results["ItlP95"]
    assert (ttft.passed, ttft.value, ttft.baseline) == (False, 0.61, 0.2)
    assert "610.0 ms" in ttft.message and "300.0 ms" in ttft.message
    assert itl.passed is False and itl.threshold == pytest.approx(0.03)


def test_a_zero_stable_p95_is_floored() -> None:
    stable = RevisionStats(attempts=1000, errors=0, ttft_p95=0.0, itl_p95=0.0)
    quick = RevisionStats(attempts=100, errors=0, ttft_p95=0.0012, itl_p95=0.0)
    results = by_check(judge_slo(SLO, "west", quick, stable))
    assert results["TtftP95"].passed is True  # 1.2 ms <= 1 ms floor x 1.5
    assert results["TtftP95"].threshold == pytest.approx(LATENCY_FLOOR_SECONDS * 1.5)
    assert results["ItlP95"].passed is True
    slower = RevisionStats(attempts=100, errors=0, ttft_p95=0.002)
    assert by_check(judge_slo(SLO, "west", slower, stable))["TtftP95"].passed is False


def test_too_few_canary_requests_is_inconclusive() -> None:
    few = RevisionStats(attempts=19, errors=19, ttft_p95=9.0)
    results = judge_slo(SLO, "west", few, STABLE)
    assert [r.passed for r in by_check(results).values()] == [None] * 4
    assert all("19 canary requests" in r.message and "minRequests 20" in r.message
               for r in results)  # fmt: skip
    assert [r.passed for r in judge_slo(SLO, "west", RevisionStats(), STABLE)] == [None] * 4


def test_without_streaming_itl_and_throughput_pass_with_a_message() -> None:
    stable = RevisionStats(attempts=1000, errors=0, ttft_p95=0.2, tokens=9000, stream_seconds=0)
    canary = RevisionStats(attempts=100, errors=0, ttft_p95=0.2, tokens=900)
    results = by_check(judge_slo(SLO, "west", canary, stable))
    for check in ("ItlP95", "Throughput"):
        assert results[check].passed is True and "no streamed answers" in results[check].message


def test_streaming_on_one_side_only_is_inconclusive() -> None:
    canary = RevisionStats(attempts=100, errors=0, ttft_p95=0.2)
    results = by_check(judge_slo(SLO, "west", canary, STABLE))
    assert results["ItlP95"].passed is None and "canary" in results["ItlP95"].message
    assert results["Throughput"].passed is None


def test_throughput_ratio() -> None:
    slow = RevisionStats(attempts=100, errors=0, ttft_p95=0.2, itl_p95=0.02, tokens=3000,
                         stream_seconds=50)  # fmt: skip
    result = by_check(judge_slo(SLO, "west", slow, STABLE))["Throughput"]
    assert (result.passed, result.value, result.baseline) == (False, 60.0, 100.0)


def test_no_stable_traffic_judges_errors_against_zero_and_nothing_else() -> None:
    canary = RevisionStats(attempts=100, errors=0, ttft_p95=0.2, itl_p95=0.02, tokens=10,
                           stream_seconds=1)  # fmt: skip
    results = by_check(judge_slo(SLO, "west", canary, RevisionStats()))
    assert results["ErrorRatio"].passed is True and results["ErrorRatio"].baseline is None
    assert [results[c].passed for c in ("TtftP95", "ItlP95", "Throughput")] == [None] * 3
    erring = RevisionStats(attempts=100, errors=5)
    assert by_check(judge_slo(SLO, "west", erring, RevisionStats()))["ErrorRatio"].passed is False


def test_slo_gates_off_judge_nothing() -> None:
    assert judge_slo(SloGates(enabled=False), "west", RevisionStats(), STABLE) == []


# --- ConfigMap prompts -----------------------------------------------------------------------

YAML = """
- name: capital
  prompt: Capital of France?
  maxTokens: 8
  checks: {regex: Paris, mustNotContain: [sorry]}
- name: json
  messages:
    - {role: system, content: Answer in JSON.}
    - {role: user, content: 'The city?'}
  checks:
    jsonSchema: {type: object, required: [city]}
"""


def test_prompts_from_a_configmap() -> None:
    prompts = prompts_from_configmap({"golden-prompts.yaml": YAML}, "golden-prompts.yaml")
    assert [p.name for p in prompts] == ["capital", "json"]
    assert prompts[0].max_tokens == 8 and prompts[0].checks.must_not_contain == ["sorry"]
    assert prompts[1].messages is not None and prompts[1].messages[0].role == "system"
    assert prompts_from_configmap({"k": ""}, "k") == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "has no key 'k'"),
        ({"k": "- name: [unclosed"}, "not YAML"),
        ({"k": "name: capital"}, "not a list"),
        ({"k": "- {name: a, prompt: b, checks: {}, extra: 1}"}, "prompt 0"),
        ({"k": "- {name: a, prompt: b, checks: {maxLength: -1}}"}, "checks.maxLength"),
        ({"k": "- {name: a, checks: {}}"}, "either prompt or messages"),
        ({"k": "\n".join(f"- {{name: p{i}, prompt: x, checks: {{}}}}" for i in range(17))},
         "at most 16"),
    ],
)  # fmt: skip
def test_a_bad_configmap_is_a_clear_error(data: dict[str, str], expected: str) -> None:
    with pytest.raises(ValueError, match=r".") as caught:
        prompts_from_configmap(data, "k")
    assert expected in str(caught.value)


def test_the_plan_layer_does_no_io() -> None:
    """import-linter sees only the project's packages: the plan's purity against I/O
    libraries is held here (httpx, Prometheus, Kubernetes and friends belong to k8s/)."""
    io = {"httpx", "prometheus_api_client", "prometheus_client", "kubernetes", "kopf",
          "aiohttp", "requests", "urllib3", "socket", "subprocess", "asyncio"}  # fmt: skip
    folder = Path(plan_gates.__file__).parent
    found = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )  # fmt: skip
            found |= {(path.name, n) for n in names if n.split(".")[0] in io}
    assert not found
