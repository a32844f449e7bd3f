"""The judgements a canary step gets, as pure functions: a golden prompt's answer against its
checks, a pool's live SLOs canary against stable, and golden prompts read from a ConfigMap.

Each judgement is a list of ``GateResult``: ``passed`` True, False, or None (inconclusive:
the step waits, and rolls back at its progress deadline; fail closed). ``k8s/gates.py`` does
the I/O (the router through ``k8s/golden.py``, Prometheus through ``k8s/slo.py``, the
ConfigMap) and calls these.

Decisions worth knowing (docs/rollouts.md, "Gates"):

- Latency ratios divide by the stable p95 floored at ``LATENCY_FLOOR_SECONDS`` (1 ms): a stable
  revision whose p95 rounds to zero (tiny answers, a histogram's first bucket) must not fail
  every canary by a division by (nearly) zero.
- A stable side with no traffic in the window: the error ratio is judged against zero (the
  canary's own ratio must stay within the allowed increase: stricter, so a failing canary
  still rolls back at once), the latency and throughput checks are inconclusive (nothing to
  compare to; fail closed).
- ITL and throughput need streamed answers: with none on either side they pass with a message
  (nothing to judge, the traffic does not stream); on one side only they are inconclusive.
- Regular expressions run under the ``regex`` library (Python syntax) with a timeout: a
  pattern that backtracks catastrophically fails the check instead of freezing the operator.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import regex
import yaml
from pydantic import ValidationError

from factory_operator.api.rollout import MAX_GOLDEN_PROMPTS, GateResult, GoldenPrompt, SloGates

GOLDEN_PROMPT = "GoldenPrompt"
ERROR_RATIO = "ErrorRatio"
TTFT_P95 = "TtftP95"
ITL_P95 = "ItlP95"
THROUGHPUT = "Throughput"
SLO_CHECKS = (ERROR_RATIO, TTFT_P95, ITL_P95, THROUGHPUT)

# Answers longer than this are not run through a regex, a JSON parser or difflib (each is
# superlinear somewhere); max_tokens <= 4096 keeps a sane answer well below it.
MAX_JUDGED_CHARS = 32_768
# Wall time one regex search may take on one answer (regex's own timeout).
REGEX_TIMEOUT_SECONDS = 0.25
# Characters of the answer shown in a message (the whole message is bounded by GateResult).
EXCERPT_CHARS = 80
MAX_MESSAGE = 1024
# Stable p95s below this count as this (1 ms): see the module docstring.
LATENCY_FLOOR_SECONDS = 0.001
# Float noise allowed when a value sits exactly on its limit.
EPSILON = 1e-9


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """A short, quoted piece of ``text`` for a message (its length when cut)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} chars)"


def gate_result(
    check: str,
    pool: str,
    passed: bool | None,
    message: str,
    *,
    value: float | None = None,
    baseline: float | None = None,
    threshold: float | None = None,
) -> GateResult:
    """A GateResult whose message is cut to what the status holds."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return GateResult(
        check=check,
        pool=pool,
        passed=passed,
        value=value,
        baseline=baseline,
        threshold=threshold,
        message=message,
    )


# --- golden prompts --------------------------------------------------------------------------


def check_answer(
    prompt: GoldenPrompt, pool: str, answer: str, stable_answer: str | None
) -> list[GateResult]:
    """One result per check the prompt gives (one passed result when it gives none)."""
    checks = prompt.checks
    shown = excerpt(answer)

    def result(
        name: str,
        passed: bool | None,
        what: str,
        value: float | None = None,
        threshold: float | None = None,
    ) -> GateResult:
        verdict = {True: "passed", False: "failed", None: "inconclusive"}[passed]
        return gate_result(
            GOLDEN_PROMPT,
            pool,
            passed,
            f"golden prompt {prompt.name!r}, {name} {verdict}: {what}; answer {shown}",
            value=value,
            threshold=threshold,
        )

    too_long = len(answer) > MAX_JUDGED_CHARS
    out: list[GateResult] = []
    if checks.equals is not None:
        same = answer == checks.equals
        out.append(result("equals", same, f"expected {excerpt(checks.equals)}"))
    if checks.regex is not None:
        out.append(result("regex", *_regex(checks.regex, answer, too_long)))
    if checks.json_schema is not None:
        out.append(result("jsonSchema", *_json_schema(checks.json_schema, answer, too_long)))
    if checks.max_length is not None:
        length = len(answer)
        out.append(
            result(
                "maxLength",
                length <= checks.max_length,
                f"{length} chars, at most {checks.max_length}",
                value=float(length),
                threshold=float(checks.max_length),
            )
        )
    if checks.must_not_contain:
        found = [s for s in checks.must_not_contain if s in answer]
        what = f"contains {excerpt(found[0], 40)}" if found else "contains none of them"
        out.append(result("mustNotContain", not found, what))
    if checks.similar_to_stable is not None:
        least = checks.similar_to_stable
        if stable_answer is None:
            out.append(result("similarToStable", None, "no answer from the stable revision"))
        elif too_long or len(stable_answer) > MAX_JUDGED_CHARS:
            out.append(result("similarToStable", False, f"over {MAX_JUDGED_CHARS} chars"))
        else:
            ratio = difflib.SequenceMatcher(None, answer, stable_answer).ratio()
            out.append(
                result(
                    "similarToStable",
                    ratio + EPSILON >= least,
                    f"similarity {ratio:.3f} to the stable answer {excerpt(stable_answer)}, "
                    f"at least {least:g}",
                    value=ratio,
                    threshold=least,
                )
            )
    if not out:
        out.append(result("answer", True, "answered (no checks given)"))
    return out


def _regex(pattern: str, answer: str, too_long: bool) -> tuple[bool, str]:
    try:
        compiled = regex.compile(pattern)
    except (regex.error, ValueError, OverflowError) as err:
        return False, f"the regex {excerpt(pattern, 60)} is invalid: {err}"
    if too_long:
        return False, f"the answer is over {MAX_JUDGED_CHARS} chars"
    try:
        found = compiled.search(answer, timeout=REGEX_TIMEOUT_SECONDS) is not None
    except TimeoutError:
        return False, (
            f"the regex {excerpt(pattern, 60)} took over {REGEX_TIMEOUT_SECONDS} s on the "
            "answer (catastrophic backtracking: rewrite it)"
        )
    return found, f"{excerpt(pattern, 60)} {'matches' if found else 'does not match'}"


def _json_schema(schema: dict[str, Any], answer: str, too_long: bool) -> tuple[bool, str]:
    validator_class = jsonschema.Draft202012Validator
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as err:
        return False, f"the schema is invalid: {err.message[:200]}"
    if too_long:
        return False, f"the answer is over {MAX_JUDGED_CHARS} chars"
    try:
        document = json.loads(answer)
    except (ValueError, RecursionError) as err:
        return False, f"the answer is not JSON ({str(err)[:120]})"
    # No remote $ref is ever fetched: jsonschema's registry resolves only what it is given.
    error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return False, f"at {where}: {error.message[:200]}"
    return True, "the answer satisfies the schema"


def prompts_from_configmap(data: Mapping[str, str], key: str) -> list[GoldenPrompt]:
    """The golden prompts of a ConfigMap's ``data[key]`` (a YAML list, the goldenPrompts
    schema in camelCase). Raises ValueError with a message for the user (the caller turns it
    into an inconclusive result: a ConfigMap can be fixed, it is never permanent)."""
    if key not in data:
        raise ValueError(f"has no key {key!r} (keys: {', '.join(sorted(data)[:10]) or 'none'})")
    try:
        items = yaml.safe_load(data[key])
    except yaml.YAMLError as err:
        raise ValueError(f"key {key!r} is not YAML: {str(err)[:300]}") from None
    if items is None:
        return []
    if not isinstance(items, list):
        raise ValueError(f"key {key!r} holds a {type(items).__name__}, not a list of prompts")
    if len(items) > MAX_GOLDEN_PROMPTS:
        raise ValueError(
            f"key {key!r} holds {len(items)} prompts, at most {MAX_GOLDEN_PROMPTS} are judged"
        )
    prompts = []
    for index, item in enumerate(items):
        try:
            prompt = GoldenPrompt.model_validate(item)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(item)"
            raise ValueError(
                f"key {key!r}, prompt {index}: {where}: {first['msg']} "
                f"({err.error_count()} error(s))"
            ) from None
        # The CRD's CEL rule, which a ConfigMap never went through.
        if (prompt.prompt is None) == (prompt.messages is None):
            raise ValueError(
                f"key {key!r}, prompt {index} ({prompt.name!r}): give either prompt or messages"
            )
        prompts.append(prompt)
    return prompts


# --- live SLOs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevisionStats:
    """What clients saw of one revision of a pool over the window (None: no series)."""

    attempts: float | None = None
    errors: float | None = None
    ttft_p95: float | None = None
    itl_p95: float | None = None
    tokens: float | None = None
    stream_seconds: float | None = None

    @property
    def error_ratio(self) -> float | None:
        if not self.attempts or self.attempts <= 0:
            return None
        return min(1.0, max(0.0, (self.errors or 0.0) / self.attempts))

    @property
    def throughput(self) -> float | None:
        """Tokens per second of streaming; None without streamed answers."""
        if not self.stream_seconds or self.stream_seconds <= 0 or self.tokens is None:
            return None
        return self.tokens / self.stream_seconds


def inconclusive_slo(pool: str, message: str) -> list[GateResult]:
    """Every SLO check of a pool inconclusive, for one reason."""
    return [gate_result(check, pool, None, message) for check in SLO_CHECKS]


def judge_slo(
    slo: SloGates, pool: str, canary: RevisionStats, stable: RevisionStats
) -> list[GateResult]:
    """The pool's canary against its stable revision; [] when the SLO gates are off."""
    if not slo.enabled:
        return []
    attempts = canary.attempts or 0.0
    if attempts < slo.min_requests:
        return inconclusive_slo(
            pool,
            f"{attempts:.0f} canary requests in the window, fewer than minRequests "
            f"{slo.min_requests}: waiting for traffic",
        )
    return [
        _error_ratio(slo, pool, canary, stable),
        _latency(check=TTFT_P95, label="TTFT p95", max_ratio=slo.max_ttft_p95_ratio, pool=pool,
                 value=canary.ttft_p95, base=stable.ttft_p95, stable=stable, streamed=False),
        _latency(check=ITL_P95, label="ITL p95", max_ratio=slo.max_itl_p95_ratio, pool=pool,
                 value=canary.itl_p95, base=stable.itl_p95, stable=stable, streamed=True),
        _throughput(slo, pool, canary, stable),
    ]  # fmt: skip


def _error_ratio(
    slo: SloGates, pool: str, canary: RevisionStats, stable: RevisionStats
) -> GateResult:
    ratio = canary.error_ratio or 0.0
    base = stable.error_ratio
    against = "stable" if base is not None else "zero (no stable traffic in the window)"
    limit = (base or 0.0) + slo.max_error_ratio_increase
    return gate_result(
        ERROR_RATIO,
        pool,
        ratio <= limit + EPSILON,
        f"canary error ratio {ratio:.2%} of {canary.attempts:.0f} attempts, "
        f"{against} {(base or 0.0):.2%}, at most {limit:.2%} "
        f"(+{slo.max_error_ratio_increase:.2%})",
        value=ratio,
        baseline=base,
        threshold=limit,
    )


def _latency(
    *,
    check: str,
    label: str,
    max_ratio: float,
    pool: str,
    value: float | None,
    base: float | None,
    stable: RevisionStats,
    streamed: bool,
) -> GateResult:
    if streamed and value is None and base is None:
        return gate_result(check, pool, True, f"{label}: no streamed answers on either side")
    if not stable.attempts:
        return gate_result(check, pool, None, f"{label}: no stable traffic in the window")
    if value is None or base is None:
        side = "canary" if value is None else "stable"
        return gate_result(check, pool, None, f"{label}: no {side} observations in the window")
    limit = max(base, LATENCY_FLOOR_SECONDS) * max_ratio
    return gate_result(
        check,
        pool,
        value <= limit + EPSILON,
        f"canary {label} {value * 1000:.1f} ms, stable {base * 1000:.1f} ms, at most "
        f"{limit * 1000:.1f} ms (x{max_ratio:g}, stable floored at "
        f"{LATENCY_FLOOR_SECONDS * 1000:g} ms)",
        value=value,
        baseline=base,
        threshold=limit,
    )


def _throughput(
    slo: SloGates, pool: str, canary: RevisionStats, stable: RevisionStats
) -> GateResult:
    value, base = canary.throughput, stable.throughput
    if value is None and base is None:
        return gate_result(THROUGHPUT, pool, True, "throughput: no streamed answers on either side")
    if not stable.attempts:
        return gate_result(THROUGHPUT, pool, None, "throughput: no stable traffic in the window")
    if value is None or base is None:
        side = "canary" if value is None else "stable"
        return gate_result(THROUGHPUT, pool, None, f"throughput: no {side} streamed answers")
    limit = base * slo.min_throughput_ratio
    return gate_result(
        THROUGHPUT,
        pool,
        value + EPSILON >= limit,
        f"canary {value:.1f} tokens/s per stream, stable {base:.1f}, at least {limit:.1f} "
        f"(x{slo.min_throughput_ratio:g})",
        value=value,
        baseline=base,
        threshold=limit,
    )
