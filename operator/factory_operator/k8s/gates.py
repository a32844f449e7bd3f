"""A canary step's judgement: ``judge_step``, the one call the rollout timer makes when a
step's pause is over. It reads the router's per-revision SLOs from Prometheus
(``k8s/slo.py``), reads golden prompts inline and from the ConfigMap a factory names, sends
them through the router (``k8s/golden.py``), and has ``plan/gates.py`` judge what was read.

Nothing here decides. Whatever cannot be read (no ``--prometheus-url``, no ``--router-url``
or admin key, Prometheus or the router down or slow, a missing ConfigMap, golden prompts not
all answered within ``JUDGEMENT_BUDGET_SECONDS``) is an inconclusive result whose message
says why and what to set; it never passes (fail closed: the step waits and rolls back at its
progress deadline).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any, NamedTuple, Protocol

from factory_operator.api.rollout import GateResult, GoldenPrompt, Rollout, RolloutStep, SloGates
from factory_operator.k8s.golden import ADMIN_KEY_ENV, Answer, GoldenPromptRunner, Target
from factory_operator.k8s.slo import SloReader
from factory_operator.plan.gates import (
    GOLDEN_PROMPT,
    check_answer,
    gate_result,
    inconclusive_slo,
    judge_slo,
    prompts_from_configmap,
)
from factory_operator.plan.settings import OperatorSettings

log = logging.getLogger(__name__)

# A whole judgement's golden prompts must end within this: the reconcile judges holding the
# factory's lock (no spec change, revert or other reconcile of the factory meanwhile), and
# pools x prompts x 2 requests through ROUTER_LIMITS' connections (k8s/golden.py) at
# ROUTER_TIMEOUT's read timeout each could take hours against a router that is slow or hangs.
# Past it: inconclusive.
JUDGEMENT_BUDGET_SECONDS = 120.0


class WavePool(NamedTuple):
    """A pool of the wave under judgement: its canary revision and its stable one (None for
    a pool that has no stable revision yet). A plain ``(name, canary, stable)`` tuple (as
    ``plan.rollout_plan.GatesRequest.pools`` holds) is one too."""

    name: str
    canary_revision: str
    stable_revision: str | None


class ConfigMapSource(Protocol):
    """What judge_step needs of the API server (``k8s.client.Kube`` is one)."""

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Awaitable[dict[str, Any] | None]: ...


async def judge_step(
    *,
    namespace: str,
    factory: str,
    model: str,
    rollout: Rollout,
    step: RolloutStep,
    pools: Sequence[tuple[str, str, str | None]],
    settings: OperatorSettings,
    kube: ConfigMapSource,
    slo_reader: SloReader | None = None,
    prompt_runner: GoldenPromptRunner | None = None,
    budget_seconds: float = JUDGEMENT_BUDGET_SECONDS,
) -> tuple[GateResult, ...]:
    """Every gate of the step for every pool of the wave: SLOs first, then golden prompts,
    pool by pool in the order given. ``slo_reader`` and ``prompt_runner`` default to ones
    built from the settings (a runner given is not closed here). Golden prompts not all
    answered within ``budget_seconds``: one inconclusive result per pool."""
    gates = rollout.gates
    wave = [WavePool(*pool) for pool in pools]
    slo_task = _slo_results(
        namespace=namespace, factory=factory, step=step, pools=wave, slo=gates.slo,
        settings=settings, reader=slo_reader,
    )  # fmt: skip
    prompts_task = _prompt_results(
        namespace=namespace, factory=factory, model=model, rollout=rollout, pools=wave,
        settings=settings, kube=kube, runner=prompt_runner,
    )  # fmt: skip
    slo, prompts = await asyncio.gather(slo_task, _bounded(prompts_task, wave, budget_seconds))
    return (*slo, *prompts)


async def _bounded(
    prompts: Awaitable[list[GateResult]], pools: Sequence[WavePool], budget: float
) -> list[GateResult]:
    try:
        return await asyncio.wait_for(prompts, timeout=budget)
    except TimeoutError:
        why = (
            f"golden prompts not judged within {budget:g} s (the router is slow or does not "
            "answer); judged again at the next interval"
        )
        log.warning("%s", why)
        return [gate_result(GOLDEN_PROMPT, p.name, None, why) for p in pools]


async def _slo_results(
    *,
    namespace: str,
    factory: str,
    step: RolloutStep,
    pools: Sequence[WavePool],
    slo: SloGates,
    settings: OperatorSettings,
    reader: SloReader | None,
) -> list[GateResult]:
    if not slo.enabled or not pools:
        return []
    if reader is None:
        if settings.prometheus_url is None:
            why = "SLOs cannot be judged: set --prometheus-url (FACTORY_OPERATOR_PROMETHEUS_URL)"
            return [r for p in pools for r in inconclusive_slo(p.name, why)]
        reader = SloReader(settings.prometheus_url)
    revisions = {p.canary_revision for p in pools} | {
        p.stable_revision for p in pools if p.stable_revision
    }
    reading = await reader.read(
        namespace, factory, [p.name for p in pools], sorted(revisions), step.pause_seconds
    )
    results: list[GateResult] = []
    for pool in pools:
        if reading.problem is not None:
            results += inconclusive_slo(pool.name, f"SLOs not judged: {reading.problem}")
            continue
        canary = reading.of(pool.name, pool.canary_revision)
        stable = reading.of(pool.name, pool.stable_revision)
        results += judge_slo(slo, pool.name, canary, stable)
    return results


async def _golden_prompts(
    namespace: str, rollout: Rollout, kube: ConfigMapSource
) -> tuple[list[GoldenPrompt], str | None]:
    """The inline prompts and the ConfigMap's, or the problem reading the ConfigMap."""
    prompts = list(rollout.gates.golden_prompts)
    source = rollout.gates.golden_prompts_from
    if source is None:
        return prompts, None
    where = f"ConfigMap {namespace}/{source.name}"
    try:
        configmap = await kube.get("v1", "ConfigMap", source.name, namespace)
    except Exception as exc:  # API server down, RBAC: the next judgement retries
        log.warning("reading %s failed: %s: %s", where, type(exc).__name__, str(exc)[:300])
        return prompts, f"{where} could not be read ({type(exc).__name__})"
    if configmap is None:
        return prompts, f"{where} (goldenPromptsFrom) does not exist"
    try:
        prompts += prompts_from_configmap(configmap.get("data") or {}, source.key)
    except ValueError as err:
        return prompts, f"{where} {err}"
    return prompts, None


async def _prompt_results(
    *,
    namespace: str,
    factory: str,
    model: str,
    rollout: Rollout,
    pools: Sequence[WavePool],
    settings: OperatorSettings,
    kube: ConfigMapSource,
    runner: GoldenPromptRunner | None,
) -> list[GateResult]:
    if not pools or (
        not rollout.gates.golden_prompts and rollout.gates.golden_prompts_from is None
    ):
        return []
    prompts, problem = await _golden_prompts(namespace, rollout, kube)
    if problem is not None:
        return [gate_result(GOLDEN_PROMPT, p.name, None, problem) for p in pools]
    if not prompts:
        return []
    if runner is not None:
        return await _ask_all(
            runner=runner,
            namespace=namespace,
            factory=factory,
            model=model,
            prompts=prompts,
            pools=pools,
        )
    url, key = settings.router_url, settings.router_admin_key
    if url is None or key is None:
        missing = [] if url else ["--router-url (FACTORY_OPERATOR_ROUTER_URL)"]
        missing += [] if key else [ADMIN_KEY_ENV]
        why = f"golden prompts cannot be judged: set {' and '.join(missing)}"
        return [gate_result(GOLDEN_PROMPT, p.name, None, why) for p in pools]
    async with GoldenPromptRunner(url, key) as own:
        return await _ask_all(
            runner=own,
            namespace=namespace,
            factory=factory,
            model=model,
            prompts=prompts,
            pools=pools,
        )


async def _ask_all(
    *,
    runner: GoldenPromptRunner,
    namespace: str,
    factory: str,
    model: str,
    prompts: Sequence[GoldenPrompt],
    pools: Sequence[WavePool],
) -> list[GateResult]:
    async def one(pool: WavePool, prompt: GoldenPrompt) -> list[GateResult]:
        canary = Target(namespace, factory, pool.name, pool.canary_revision)
        ask_stable = prompt.checks.similar_to_stable is not None and pool.stable_revision
        stable = Target(namespace, factory, pool.name, pool.stable_revision or "")
        canary_answer, stable_answer = await asyncio.gather(
            runner.ask(canary, model, prompt),
            runner.ask(stable, model, prompt) if ask_stable else _no_answer(),
        )
        if canary_answer.problem is not None:
            return [canary_answer.problem]
        if canary_answer.text is None:  # an Answer has one or the other
            return []
        return check_answer(prompt, pool.name, canary_answer.text, stable_answer.text)

    per_pair = await asyncio.gather(*(one(pool, p) for pool in pools for p in prompts))
    return [r for results in per_pair for r in results]


async def _no_answer() -> Answer:
    return Answer()
