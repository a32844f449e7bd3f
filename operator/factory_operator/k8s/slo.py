"""A canary step's SLOs as Prometheus has them: the router's per-revision series
(``SloReader``), read for ``judge_step`` (k8s/gates.py) and judged by ``plan/gates.py``.

Nothing here decides. Prometheus down, slow or answering garbage is an ``SloReading`` whose
``problem`` says why; the caller turns it into inconclusive results (fail closed).

PromQL, one query per signal for every pool of the wave at once, at one instant, over the
step's window ``[Ns]`` (N = pauseSeconds), on ``factory_contract.metrics``' names:

    attempts  sum by (pool, revision, outcome) (increase(<attempts>{...}[Ns]))
    ttft_p95  histogram_quantile(0.95, sum by (le, pool, revision) (rate(<ttft>_bucket[Ns])))
    itl_p95   the same on the ITL histogram
    tokens    sum by (pool, revision) (increase(<completion tokens>{...}[Ns]))
    stream    sum by (pool, revision) (increase(<stream seconds>{...}[Ns]))
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from factory_contract.metrics import (
    BACKEND_ATTEMPTS,
    BACKEND_COMPLETION_TOKENS,
    BACKEND_ITL_SECONDS,
    BACKEND_STREAM_SECONDS,
    BACKEND_TTFT_SECONDS,
)
from factory_operator.plan.gates import RevisionStats

log = logging.getLogger(__name__)

# One Prometheus query must answer within this (as the autoscaler's, k8s/load.py); the
# queries of one judgement run side by side, so a judgement waits about this long at most.
QUERY_TIMEOUT_SECONDS = 5.0

Vector = list[dict[str, Any]]
Query = Callable[[str, float], Vector]  # (PromQL, evaluation time) -> instant vector


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
