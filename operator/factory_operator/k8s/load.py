"""Per-pool load of one factory from Prometheus, for the autoscaler (prometheus-api-client in a
worker thread, off the request path: the reconcile reads it, no request waits for it).

Instant queries, one per signal, on the project's label set (``namespace``, ``factory``,
``pool``; vLLM's own metric names):

    running   sum by (pool) (vllm:num_requests_running{...})
    waiting   sum by (pool) (vllm:num_requests_waiting{...})
    kv        avg by (pool) (vllm:kv_cache_usage_perc{...})
    ttft_p95  histogram_quantile(0.95, sum by (pool, le) (rate(..._bucket{...}[1m])))
    growth    deriv of running + waiting over the last two minutes (requests per second)
    pending   sum by (pool) (factory_router_pending_requests{...}): requests the router holds
              for a pool at zero or starting, on the one pool that should wake (issue 17,
              item 3; router/factory_router/app/hold.py); no series: none held
    tokens    sum by (pool) (rate(vllm:generation_tokens_total{...}[2m])): tokens generated
              per second, for the growth's price per token (``FleetRegion.spec.pricing``)

A failed read is "no metrics" (``None``): the autoscaler then holds every count rather than
act on a partial picture.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from factory_operator.plan.autoscale import PoolLoad

log = logging.getLogger(__name__)

# One Prometheus query must answer within this; the reconcile never waits longer per signal.
QUERY_TIMEOUT_SECONDS = 5.0
PENDING_METRIC = "factory_router_pending_requests"
Vector = list[dict[str, Any]]
Query = Callable[[str], Vector]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def queries(namespace: str, factory: str) -> dict[str, str]:
    """The PromQL of each signal for one factory."""
    match = f'namespace="{_escape(namespace)}", factory="{_escape(factory)}"'
    demand = (
        f"sum by (pool) (vllm:num_requests_running{{{match}}}) + "
        f"sum by (pool) (vllm:num_requests_waiting{{{match}}})"
    )
    return {
        "running": f"sum by (pool) (vllm:num_requests_running{{{match}}})",
        "waiting": f"sum by (pool) (vllm:num_requests_waiting{{{match}}})",
        "kv": f"avg by (pool) (vllm:kv_cache_usage_perc{{{match}}})",
        "ttft_p95": "histogram_quantile(0.95, sum by (pool, le) "
        f"(rate(vllm:time_to_first_token_seconds_bucket{{{match}}}[1m])))",
        "growth": f"deriv(({demand})[2m:15s])",
        "pending": f"sum by (pool) ({PENDING_METRIC}{{{match}}})",
        "tokens": f"sum by (pool) (rate(vllm:generation_tokens_total{{{match}}}[2m]))",
    }


def loads_from_results(results: Mapping[str, Vector]) -> dict[str, PoolLoad]:
    """Pure: PromQL vectors by signal -> the load of each pool that has any sample."""
    values: dict[str, dict[str, float]] = {}
    for signal, vector in results.items():
        for series in vector:
            pool = series.get("metric", {}).get("pool")
            try:
                value = float(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if pool and math.isfinite(value):
                values.setdefault(pool, {})[signal] = value
    return {
        pool: PoolLoad(
            running=max(0.0, v.get("running", 0.0)),
            waiting=max(0.0, v.get("waiting", 0.0)),
            kv_cache_usage=v.get("kv"),
            ttft_p95_seconds=v.get("ttft_p95"),
            pending=max(0.0, v.get("pending", 0.0)),
            growth_per_second=v.get("growth"),
            tokens_per_second=v.get("tokens"),
        )
        for pool, v in values.items()
    }


class LoadReader:
    """Reads pool loads from one Prometheus (a FleetRegion's, or the operator's)."""

    def __init__(
        self, url: str, timeout: float = QUERY_TIMEOUT_SECONDS, query: Query | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._query = query  # test seam; default: prometheus-api-client, built on first use

    def _default_query(self) -> Query:
        # No retries inside a read: the next reconcile is the retry.
        prom = PrometheusConnect(url=self.url, retry=Retry(total=0), timeout=self.timeout)

        def run(promql: str) -> Vector:
            result: Vector = prom.custom_query(promql)
            return result

        return run

    def _read(self, namespace: str, factory: str) -> dict[str, PoolLoad]:
        if self._query is None:
            self._query = self._default_query()
        query = self._query
        return loads_from_results({k: query(q) for k, q in queries(namespace, factory).items()})

    async def read(self, namespace: str, factory: str) -> dict[str, PoolLoad] | None:
        """Every pool's load, or None when Prometheus did not answer (logged)."""
        try:
            return await asyncio.to_thread(self._read, namespace, factory)
        except Exception as exc:  # any failure of the source is "no metrics"
            log.warning(
                "load read from %s failed for %s/%s: %s: %s",
                self.url,
                namespace,
                factory,
                type(exc).__name__,
                str(exc)[:300],
            )
            return None
