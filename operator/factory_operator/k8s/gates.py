"""The I/O of a canary step's gates: the router's per-revision series from Prometheus
(``SloReader``), golden prompts through the router with its admin key
(``GoldenPromptRunner``), golden prompts from a ConfigMap, and ``judge_step``, the one call
the rollout timer makes when a step's pause is over.

Nothing here decides: ``plan/gates.py`` judges what is read. Whatever cannot be read (no
``--prometheus-url``, no ``--router-url`` or admin key, Prometheus or the router down or slow,
a missing ConfigMap) is an inconclusive result whose message says why and what to set; it
never passes (fail closed: the step waits and rolls back at its progress deadline).

PromQL, one query per signal for every pool of the wave at once, at one instant, over the
step's window ``[Ns]`` (N = pauseSeconds), on ``factory_contract.metrics``' names:

    attempts  sum by (pool, revision, outcome) (increase(<attempts>{...}[Ns]))
    ttft_p95  histogram_quantile(0.95, sum by (le, pool, revision) (rate(<ttft>_bucket[Ns])))
    itl_p95   the same on the ITL histogram
    tokens    sum by (pool, revision) (increase(<completion tokens>{...}[Ns]))
    stream    sum by (pool, revision) (increase(<stream seconds>{...}[Ns]))

The admin key is a ``SecretStr`` read from the settings at the moment of the request: it is
never logged, never put in a result, and scrubbed from anything the router answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import httpx
from prometheus_api_client import PrometheusConnect
from pydantic import SecretStr
from urllib3.util.retry import Retry

from factory_contract.metrics import (
    BACKEND_ATTEMPTS,
    BACKEND_COMPLETION_TOKENS,
    BACKEND_ITL_SECONDS,
    BACKEND_STREAM_SECONDS,
    BACKEND_TTFT_SECONDS,
)
from factory_contract.names import TARGET_HEADER
from factory_operator.api.rollout import GateResult, GoldenPrompt, Rollout, RolloutStep, SloGates
from factory_operator.plan.gates import (
    GOLDEN_PROMPT,
    RevisionStats,
    check_answer,
    excerpt,
    gate_result,
    inconclusive_slo,
    judge_slo,
    prompts_from_configmap,
)
from factory_operator.plan.settings import OperatorSettings

log = logging.getLogger(__name__)

# One Prometheus query must answer within this (as the autoscaler's, k8s/load.py); the
# queries of one judgement run side by side, so a judgement waits about this long at most.
QUERY_TIMEOUT_SECONDS = 5.0
# A golden prompt is one non-streamed completion: the read timeout is its whole generation
# (max_tokens <= 4096) on a canary under load. Connect and pool waits stay short.
ROUTER_TIMEOUT = httpx.Timeout(60.0, connect=5.0, pool=10.0)
# Golden prompts of one judgement share these connections (pools x prompts x 2 requests
# queue for them rather than open dozens at once).
ROUTER_LIMITS = httpx.Limits(max_connections=8, max_keepalive_connections=8)
# An answer body over this is not read further (max_tokens <= 4096 keeps a real one far below).
MAX_ANSWER_BYTES = 1 << 20
# A whole judgement's golden prompts must end within this: the reconcile judges holding the
# factory's lock (no spec change, revert or other reconcile of the factory meanwhile), and
# pools x prompts x 2 requests through ROUTER_LIMITS' connections at ROUTER_TIMEOUT's read
# timeout each could take hours against a router that is slow or hangs. Past it: inconclusive.
JUDGEMENT_BUDGET_SECONDS = 120.0
# Characters of the router's error message kept in a result.
MAX_ROUTER_ERROR = 200
USER_AGENT = "factory-operator-gates"
ADMIN_KEY_ENV = "FACTORY_OPERATOR_ROUTER_ADMIN_KEY"

Vector = list[dict[str, Any]]
Query = Callable[[str, float], Vector]  # (PromQL, evaluation time) -> instant vector


# --- Prometheus -------------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _alternatives(values: Sequence[str]) -> str:
    # A regex matcher of exact values (RE2, anchored): metacharacters escaped.
    special = set(r"\.+*?()|[]{}^$")
    escaped = ["".join("\\" + c if c in special else c for c in v) for v in sorted(set(values))]
    return _escape("|".join(escaped))


def slo_queries(
    namespace: str,
    factory: str,
    pools: Sequence[str],
    revisions: Sequence[str],
    window_seconds: int,
) -> dict[str, str]:
    """The PromQL of each signal for these pools and revisions of one factory."""
    match = (
        f'namespace="{_escape(namespace)}", factory="{_escape(factory)}", '
        f'pool=~"{_alternatives(pools)}", revision=~"{_alternatives(revisions)}"'
    )
    window = f"[{int(window_seconds)}s]"

    def p95(histogram: str) -> str:
        return (
            "histogram_quantile(0.95, sum by (le, pool, revision) "
            f"(rate({histogram}_bucket{{{match}}}{window})))"
        )

    return {
        "attempts": f"sum by (pool, revision, outcome) "
        f"(increase({BACKEND_ATTEMPTS}{{{match}}}{window}))",
        "ttft_p95": p95(BACKEND_TTFT_SECONDS),
        "itl_p95": p95(BACKEND_ITL_SECONDS),
        "tokens": f"sum by (pool, revision) "
        f"(increase({BACKEND_COMPLETION_TOKENS}{{{match}}}{window}))",
        "stream_seconds": f"sum by (pool, revision) "
        f"(increase({BACKEND_STREAM_SECONDS}{{{match}}}{window}))",
    }


def stats_from_results(results: Mapping[str, Vector]) -> dict[tuple[str, str], RevisionStats]:
    """Pure: PromQL vectors by signal -> the stats of each (pool, revision) with a sample.
    NaN (a quantile of no observations) and missing series are None."""
    values: dict[tuple[str, str], dict[str, float]] = {}
    for signal, vector in results.items():
        for series in vector:
            labels = series.get("metric", {})
            key = (labels.get("pool"), labels.get("revision"))
            try:
                value = float(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if not key[0] or not key[1] or not math.isfinite(value):
                continue
            into = values.setdefault((str(key[0]), str(key[1])), {})
            if signal == "attempts":
                into["attempts"] = into.get("attempts", 0.0) + max(0.0, value)
                if labels.get("outcome") == "error":
                    into["errors"] = into.get("errors", 0.0) + max(0.0, value)
            else:
                into[signal] = value
    return {
        key: RevisionStats(
            attempts=v.get("attempts"),
            errors=v.get("errors", 0.0 if "attempts" in v else None),
            ttft_p95=v.get("ttft_p95"),
            itl_p95=v.get("itl_p95"),
            tokens=v.get("tokens"),
            stream_seconds=v.get("stream_seconds"),
        )
        for key, v in values.items()
    }


@dataclass(frozen=True)
class SloReading:
    """What Prometheus said: stats by (pool, revision), or why it said nothing."""

    stats: Mapping[tuple[str, str], RevisionStats] = field(default_factory=dict)
    problem: str | None = None

    def of(self, pool: str, revision: str | None) -> RevisionStats:
        if revision is None:
            return RevisionStats()
        return self.stats.get((pool, revision), RevisionStats())


class SloReader:
    """Reads the router's per-revision series from one Prometheus."""

    def __init__(
        self, url: str, timeout: float = QUERY_TIMEOUT_SECONDS, query: Query | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._query = query or self._prometheus_query  # test seam

    def _prometheus_query(self, promql: str, at: float) -> Vector:
        # A client per query: the queries run in parallel threads, and a requests Session
        # is not meant to be shared across threads. No retries: the next judgement retries.
        with PrometheusConnect(url=self.url, retry=Retry(total=0), timeout=self.timeout) as prom:
            result: Vector = prom.custom_query(promql, params={"time": f"{at:.3f}"})
            return result

    async def read(
        self,
        namespace: str,
        factory: str,
        pools: Sequence[str],
        revisions: Sequence[str],
        window_seconds: int,
    ) -> SloReading:
        """Every (pool, revision)'s stats over the window, or the problem (logged)."""
        if not pools or not revisions:
            return SloReading()
        at = time.time()  # one instant for every signal
        promql = slo_queries(namespace, factory, pools, revisions, window_seconds)
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(asyncio.to_thread(self._query, q, at) for q in promql.values())),
                # The client's timeout bounds each request; this bounds the whole (a thread
                # left behind ends at its own timeout).
                timeout=self.timeout * 2 + 1,
            )
        except Exception as exc:  # any failure of the source is "not judged"
            problem = f"Prometheus at {self.url} did not answer: {type(exc).__name__}"
            detail = str(exc)[:300]
            log.warning("SLO read for %s/%s failed: %s: %s", namespace, factory, problem, detail)
            return SloReading(problem=f"{problem} ({detail[:160]})" if detail else problem)
        return SloReading(stats=stats_from_results(dict(zip(promql, answers, strict=True))))


# --- the router ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One revision of one pool, as the router's admin targeting header names it."""

    namespace: str
    factory: str
    pool: str
    revision: str

    @property
    def header(self) -> str:
        return f"{self.namespace}/{self.factory}/{self.pool}@{self.revision}"


@dataclass(frozen=True)
class Answer:
    """A golden prompt's answer, or the result that says why there is none."""

    text: str | None = None
    problem: GateResult | None = None


class GoldenPromptRunner:
    """Sends golden prompts through the router, one revision of one pool at a time.

    An async context manager: one ``httpx.AsyncClient`` (``ROUTER_TIMEOUT``,
    ``ROUTER_LIMITS``) for the judgement, closed with it.
    """

    def __init__(
        self,
        router_url: str,
        admin_key: SecretStr,
        *,
        timeout: httpx.Timeout = ROUTER_TIMEOUT,
        limits: httpx.Limits = ROUTER_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,  # test seam
    ) -> None:
        self.router_url = router_url.rstrip("/")
        self._key = admin_key
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=limits,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,  # a redirect would carry the key elsewhere
        )

    async def __aenter__(self) -> GoldenPromptRunner:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _scrub(self, text: str) -> str:
        key = self._key.get_secret_value()
        return text.replace(key, "***") if key else text

    async def ask(self, target: Target, model: str, prompt: GoldenPrompt) -> Answer:
        """The revision's answer to the prompt (temperature 0), or an inconclusive or failed
        result saying why not."""
        messages = (
            [m.model_dump() for m in prompt.messages]
            if prompt.messages
            else [{"role": "user", "content": prompt.prompt or ""}]
        )
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": prompt.max_tokens,
            "temperature": 0,
            "stream": False,
        }
        headers = {
            "Authorization": f"Bearer {self._key.get_secret_value()}",
            TARGET_HEADER: target.header,
        }
        where = f"golden prompt {prompt.name!r} to {target.header}"
        try:
            async with self._client.stream(
                "POST", f"{self.router_url}/v1/chat/completions", json=body, headers=headers
            ) as response:
                raw = await _read_bounded(response)
        except httpx.TimeoutException as exc:
            return self._problem(
                target, None, f"{where}: the router timed out ({type(exc).__name__})"
            )
        except httpx.HTTPError as exc:
            return self._problem(
                target, None, f"{where}: the router could not be reached ({type(exc).__name__})"
            )
        if raw is None:
            return self._problem(target, None, f"{where}: answer over {MAX_ANSWER_BYTES} bytes")
        status = response.status_code
        if status in (401, 403):
            return self._problem(
                target,
                False,
                f"{where}: the router refused the admin key (HTTP {status}: "
                f"{_router_error(raw)}): set {ADMIN_KEY_ENV} to the key of a tenant with "
                "admin: true in the router's tenants config",
            )
        if status != 200:
            return self._problem(
                target, None, f"{where}: the router answered HTTP {status}: {_router_error(raw)}"
            )
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            return self._problem(
                target, None, f"{where}: the answer has no choices[0].message.content"
            )
        return Answer(text=content)

    def _problem(self, target: Target, passed: bool | None, message: str) -> Answer:
        message = self._scrub(message)
        log.warning("golden prompt not judged: %s", message)
        return Answer(problem=gate_result(GOLDEN_PROMPT, target.pool, passed, message))


async def _read_bounded(response: httpx.Response) -> bytes | None:
    """The body, or None past MAX_ANSWER_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _router_error(raw: bytes) -> str:
    """The router's OpenAI-style error message (or the body's start), bounded."""
    try:
        error = json.loads(raw)["error"]
        text = f"{error.get('code') or error.get('type') or 'error'}: {error.get('message', '')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        text = raw[:MAX_ROUTER_ERROR].decode("utf-8", "replace")
    return excerpt(text, MAX_ROUTER_ERROR)


# --- one step's judgement -------------------------------------------------------------------


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
