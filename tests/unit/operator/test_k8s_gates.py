"""The rollout gates' I/O: golden prompts (k8s/golden.py) against a real HTTP server standing
in for the router (headers, body, errors, timeouts, the admin key never shown), the reading
of Prometheus' vectors (k8s/slo.py), and ``judge_step`` (k8s/gates.py) end to end with its
fail-closed cases."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from factory_contract.names import TARGET_HEADER
from factory_operator.api.rollout import GoldenPrompt, Rollout, RolloutStep
from factory_operator.k8s.gates import WavePool, judge_step
from factory_operator.k8s.golden import GoldenPromptRunner, Target
from factory_operator.k8s.slo import SloReader, slo_queries, stats_from_results
from factory_operator.plan.gates import RevisionStats
from factory_operator.plan.settings import OperatorSettings

KEY = "sk-admin-0123456789abcdef"
TARGET = Target("ml", "llama", "west", "abc123")


@dataclass
class FakeRouter:
    """A router that answers by the targeted revision: ``answers[revision]`` is
    (status, body); ``hang`` revisions never answer (until the test ends)."""

    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    seen: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)  # (headers, body)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((request.headers.copy(), body))
        revision = request.headers.get(TARGET_HEADER, "").partition("@")[2]
        if revision in self.hang:
            await self.release.wait()
        status, answer = self.answers.get(revision, (200, completion("Paris")))
        return web.json_response(answer, status=status)


def completion(content: str | None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


@pytest.fixture
async def router() -> AsyncIterator[FakeRouter]:
    fake = FakeRouter()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}/"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


def golden(**checks: Any) -> GoldenPrompt:
    return GoldenPrompt.model_validate(
        {"name": "capital", "prompt": "Capital of France?", "maxTokens": 8, "checks": checks}
    )


async def test_a_golden_prompt_goes_to_one_revision_with_the_admin_key(
    router: FakeRouter,
) -> None:
    async with GoldenPromptRunner(router.url, SecretStr(KEY)) as runner:
        answer = await runner.ask(TARGET, "llama-3-8b", golden(equals="Paris"))
    assert (answer.text, answer.problem) == ("Paris", None)
    ((headers, body),) = router.seen
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers[TARGET_HEADER] == "ml/llama/west@abc123"
    assert body == {
        "model": "llama-3-8b",
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": False,
    }


async def test_a_refused_key_fails_and_names_the_setting(
    router: FakeRouter, caplog: pytest.LogCaptureFixture
) -> None:
    router.answers["abc123"] = (403, error("permission_denied", f"key {KEY} is not an admin"))
    caplog.set_level(logging.DEBUG)
    async with GoldenPromptRunner(router.url, SecretStr(KEY)) as runner:
        answer = await runner.ask(TARGET, "m", golden())
    assert answer.text is None and answer.problem is not None
    assert answer.problem.passed is False and answer.problem.check == "GoldenPrompt"
    assert "FACTORY_OPERATOR_ROUTER_ADMIN_KEY" in answer.problem.message
    assert "permission_denied" in answer.problem.message
    assert KEY not in answer.problem.message  # scrubbed from what the router said
    assert KEY not in caplog.text


async def test_router_errors_are_inconclusive_with_their_status_and_message(
    router: FakeRouter,
) -> None:
    router.answers["abc123"] = (503, error("no_compliant_backend", "x" * 5000))
    router.answers["nocontent"] = (200, completion(None))
    router.answers["notjson"] = (200, "plain text")
    async with GoldenPromptRunner(router.url, SecretStr(KEY)) as runner:
        unavailable = await runner.ask(TARGET, "m", golden())
        empty = await runner.ask(Target("ml", "llama", "west", "nocontent"), "m", golden())
        odd = await runner.ask(Target("ml", "llama", "west", "notjson"), "m", golden())
    assert unavailable.problem is not None and unavailable.problem.passed is None
    message = unavailable.problem.message
    assert "HTTP 503" in message and "no_compliant_backend" in message and len(message) < 600
    assert empty.problem is not None and empty.problem.passed is None
    assert odd.problem is not None and "choices[0].message.content" in odd.problem.message


async def test_a_router_that_does_not_answer_times_out_as_inconclusive(
    router: FakeRouter,
) -> None:
    router.hang.add("abc123")
    timeout = httpx.Timeout(0.5, connect=0.5)
    async with GoldenPromptRunner(router.url, SecretStr(KEY), timeout=timeout) as runner:
        answer = await asyncio.wait_for(runner.ask(TARGET, "m", golden()), timeout=10)
    assert answer.problem is not None and answer.problem.passed is None
    assert "timed out" in answer.problem.message


async def test_a_router_down_is_inconclusive() -> None:
    async with GoldenPromptRunner("http://127.0.0.1:9", SecretStr(KEY)) as runner:
        answer = await runner.ask(TARGET, "m", golden())
    assert answer.problem is not None and answer.problem.passed is None
    assert "could not be reached" in answer.problem.message


# --- Prometheus' vectors ---------------------------------------------------------------------


def sample(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [0, value]}


def test_stats_from_results() -> None:
    stats = stats_from_results({
        "attempts": [sample("95", pool="west", revision="new", outcome="ok"),
                     sample("5", pool="west", revision="new", outcome="error"),
                     sample("200", pool="west", revision="old", outcome="ok"),
                     sample("1", pool="", revision="old", outcome="ok")],
        "ttft_p95": [sample("0.25", pool="west", revision="new"),
                     sample("NaN", pool="west", revision="old")],
        "tokens": [sample("bad", pool="west", revision="new")],
        "stream_seconds": [sample("+Inf", pool="west", revision="new")],
    })  # fmt: skip
    assert stats == {
        ("west", "new"): RevisionStats(attempts=100, errors=5, ttft_p95=0.25),
        ("west", "old"): RevisionStats(attempts=200, errors=0),
    }


def test_the_queries_select_the_wave_and_the_window() -> None:
    queries = slo_queries('m"l', "llama", ["west", "east"], ["b", "a.1"], 60)
    assert set(queries) == {"attempts", "ttft_p95", "itl_p95", "tokens", "stream_seconds"}
    for promql in queries.values():
        assert 'namespace="m\\"l", factory="llama", pool=~"east|west"' in promql
        assert 'revision=~"a\\\\.1|b"' in promql and "[60s]" in promql
    assert queries["attempts"].startswith("sum by (pool, revision, outcome) (increase(")
    assert "factory_router_backend_ttft_seconds_bucket" in queries["ttft_p95"]


# --- judge_step ------------------------------------------------------------------------------


class ConfigMaps:
    def __init__(self, objects: dict[str, dict[str, Any]] | None = None) -> None:
        self.objects = objects or {}
        self.asked: list[tuple[str, str, str, str | None]] = []

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        self.asked.append((api_version, kind, name, namespace))
        return self.objects.get(name)


def rollout(**gates: Any) -> Rollout:
    return Rollout.model_validate({"gates": gates})


STEP = RolloutStep(weight=10, pause_seconds=30)
POOLS = [WavePool("west", "new", "old"), ("east", "new", None)]


def series_for(stats: dict[tuple[str, str], dict[str, float]]) -> Any:
    """A Prometheus stand-in answering each signal from per-(pool, revision) values."""

    def query(promql: str, at: float) -> list[dict[str, Any]]:
        signal = (
            "attempts" if "attempts_total" in promql
            else "ttft_p95" if "ttft" in promql
            else "itl_p95" if "itl" in promql
            else "tokens" if "tokens_total" in promql
            else "stream_seconds"
        )  # fmt: skip
        out = []
        for (pool, revision), values in stats.items():
            if signal == "attempts":
                out.append(sample(str(values["ok"]), pool=pool, revision=revision, outcome="ok"))
                out.append(sample(str(values["error"]), pool=pool, revision=revision,
                                  outcome="error"))  # fmt: skip
            elif signal in values:
                out.append(sample(str(values[signal]), pool=pool, revision=revision))
        return out

    return query


async def test_judge_step_without_configuration_is_inconclusive_and_says_what_to_set() -> None:
    results = await judge_step(
        namespace="ml", factory="llama", model="m",
        rollout=rollout(goldenPrompts=[{"name": "capital", "prompt": "?", "checks": {}}]),
        step=STEP, pools=POOLS, settings=OperatorSettings(), kube=ConfigMaps(),
    )  # fmt: skip
    assert len(results) == 2 * 4 + 2  # 4 SLO checks and one golden prompt result per pool
    assert all(r.passed is None for r in results)
    slo = [r for r in results if r.check != "GoldenPrompt"]
    assert all("--prometheus-url" in r.message for r in slo)
    prompts = [r for r in results if r.check == "GoldenPrompt"]
    assert [r.pool for r in prompts] == ["west", "east"]
    assert all("--router-url" in r.message and "FACTORY_OPERATOR_ROUTER_ADMIN_KEY" in r.message
               for r in prompts)  # fmt: skip
    only_key = OperatorSettings(router_url="http://router")
    results = await judge_step(
        namespace="ml", factory="llama", model="m",
        rollout=rollout(slo={"enabled": False},
                        goldenPrompts=[{"name": "capital", "prompt": "?", "checks": {}}]),
        step=STEP, pools=POOLS, settings=only_key, kube=ConfigMaps(),
    )  # fmt: skip
    assert [r.message.endswith("set FACTORY_OPERATOR_ROUTER_ADMIN_KEY") for r in results] == [
        True,
        True,
    ]


async def test_judge_step_with_prometheus_down_is_inconclusive() -> None:
    def down(promql: str, at: float) -> list[dict[str, Any]]:
        raise ConnectionError("connection refused")

    results = await judge_step(
        namespace="ml", factory="llama", model="m", rollout=rollout(), step=STEP, pools=POOLS,
        settings=OperatorSettings(), kube=ConfigMaps(),
        slo_reader=SloReader("http://prometheus:9090", query=down),
    )  # fmt: skip
    assert len(results) == 8 and all(r.passed is None for r in results)
    assert all("Prometheus at http://prometheus:9090 did not answer" in r.message
               for r in results)  # fmt: skip


async def test_judge_step_end_to_end(router: FakeRouter) -> None:
    router.answers["old"] = (200, completion("The capital is Paris."))
    router.answers["new"] = (200, completion("The capital is Paris!"))
    configmap = {"data": {"golden-prompts.yaml": "- {name: short, prompt: Hi, checks: "
                          "{maxLength: 5}}"}}  # fmt: skip
    prometheus = series_for({
        ("west", "new"): {"ok": 95, "error": 5, "ttft_p95": 0.2},
        ("west", "old"): {"ok": 1000, "error": 0, "ttft_p95": 0.2},
    })  # fmt: skip
    spec = rollout(
        goldenPrompts=[{"name": "capital", "prompt": "Capital?", "checks": {
            "regex": "Paris", "similarToStable": 0.9}}],
        goldenPromptsFrom={"name": "prompts"},
    )  # fmt: skip
    kube = ConfigMaps({"prompts": configmap})
    async with GoldenPromptRunner(router.url, SecretStr(KEY)) as runner:
        results = await judge_step(
            namespace="ml", factory="llama", model="llama-3", rollout=spec, step=STEP,
            pools=POOLS[:1], settings=OperatorSettings(), kube=kube,
            slo_reader=SloReader("http://prometheus", query=prometheus), prompt_runner=runner,
        )  # fmt: skip
    assert kube.asked == [("v1", "ConfigMap", "prompts", "ml")]
    by = {(r.check, r.message.split(":")[0]): r for r in results}
    assert by["ErrorRatio", "canary error ratio 5.00% of 100 attempts, stable 0.00%, at most "
              "1.00% (+1.00%)"].passed is False  # fmt: skip
    assert by["TtftP95", "canary TTFT p95 200.0 ms, stable 200.0 ms, at most 300.0 ms (x1.5, "
              "stable floored at 1 ms)"].passed is True  # fmt: skip
    prompts = [r for r in results if r.check == "GoldenPrompt"]
    assert [(r.passed, r.message.split(":")[0]) for r in prompts] == [
        (True, "golden prompt 'capital', regex passed"),
        (True, "golden prompt 'capital', similarToStable passed"),
        (False, "golden prompt 'short', maxLength failed"),
    ]
    targets = sorted(h[TARGET_HEADER] for h, _ in router.seen)
    assert targets == ["ml/llama/west@new", "ml/llama/west@new", "ml/llama/west@old"]


async def test_judge_step_with_a_missing_configmap_is_inconclusive() -> None:
    spec = rollout(slo={"enabled": False}, goldenPromptsFrom={"name": "gone", "key": "k"})
    settings = OperatorSettings(router_url="http://router", router_admin_key=SecretStr(KEY))
    results = await judge_step(
        namespace="ml", factory="llama", model="m", rollout=spec, step=STEP, pools=POOLS,
        settings=settings, kube=ConfigMaps(),
    )  # fmt: skip
    assert [r.passed for r in results] == [None, None]
    assert all("ConfigMap ml/gone (goldenPromptsFrom) does not exist" in r.message
               for r in results)  # fmt: skip
    broken = ConfigMaps({"gone": {"data": {"k": "{"}}})
    results = await judge_step(
        namespace="ml", factory="llama", model="m", rollout=spec, step=STEP, pools=POOLS,
        settings=settings, kube=broken,
    )  # fmt: skip
    assert all(r.passed is None and "not YAML" in r.message for r in results)
    assert not any(KEY in json.dumps(r.model_dump()) for r in results)


async def test_a_judgement_is_bounded_as_a_whole(router: FakeRouter) -> None:
    """A router that takes each golden prompt's whole read timeout: the judgement (which the
    reconcile runs holding the factory's lock) ends at its budget, inconclusive."""
    router.hang.add("new")
    spec = rollout(slo={"enabled": False},
                   goldenPrompts=[{"name": "capital", "prompt": "?", "checks": {}}])  # fmt: skip
    async with GoldenPromptRunner(router.url, SecretStr(KEY)) as runner:  # 60 s read timeout
        results = await asyncio.wait_for(
            judge_step(
                namespace="ml", factory="llama", model="m", rollout=spec, step=STEP,
                pools=POOLS, settings=OperatorSettings(), kube=ConfigMaps(),
                prompt_runner=runner, budget_seconds=0.5,
            ),
            timeout=10,
        )  # fmt: skip
    assert [(r.pool, r.passed) for r in results] == [("west", None), ("east", None)]
    assert all("not judged within 0.5 s" in r.message for r in results)
