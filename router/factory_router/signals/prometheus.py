"""Background load snapshot from Prometheus (prometheus-api-client, in a worker thread).

Every `interval` seconds four instant queries are made (the labels are the project's
Prometheus label set, `factory_contract.metrics`; `pod` identifies a replica):

    waiting  sum by (namespace, factory, pool, region, pod) (vllm:num_requests_waiting)
    running  sum by (namespace, factory, pool, region, pod) (vllm:num_requests_running)
    kv       max by (namespace, factory, pool, region, pod) (vllm:kv_cache_usage_perc)
    ttft     sum by (...) (rate(vllm:time_to_first_token_seconds_sum[1m]))
           / sum by (...) (rate(vllm:time_to_first_token_seconds_count[1m]))

A replica's figures are its pod's; a backend whose pod has no series takes its pool's, the
average of the pool's replicas (`Snapshot.by_pool`), keyed by (pool, region) under both the
series' bare `pool` label and the Service name `<factory>-<pool>` that Kubernetes discovery
gives a backend's pool (issue 16: keyed by the bare name only, the fallback never matched a
discovered backend).

The TTFT is the mean over the last minute, not a quantile: vLLM's buckets are coarse where
it matters (0.1, 0.25, 0.5 s), and a p50 interpolated inside one of them is off by tens of
milliseconds (an L4 replica of the local fleet: 111 ms mean, read as a 133 ms p50), as
much as the RTT between neighbouring regions. The mean from `_sum / _count` is exact.

A failed poll keeps the previous snapshot; `LoadState` stops using it once it is older
than the staleness limit, and routing continues on passive signals alone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from factory_contract import metrics, names
from factory_router.policy.scoring import LoadSample

log = logging.getLogger("factory_router.signals")

_BY = ", ".join(
    (
        metrics.NAMESPACE_SERIES_LABEL,
        names.FACTORY_LABEL,
        names.POOL_LABEL,
        names.REGION_LABEL,
        metrics.POD_SERIES_LABEL,
    )
)
QUERIES = {
    "waiting": f"sum by ({_BY}) ({metrics.NUM_REQUESTS_WAITING})",
    "running": f"sum by ({_BY}) ({metrics.NUM_REQUESTS_RUNNING})",
    "kv": f"max by ({_BY}) ({metrics.KV_CACHE_USAGE})",
    "ttft": (
        f"sum by ({_BY}) (rate({metrics.TTFT_SECONDS_SUM}[1m])) "
        f"/ sum by ({_BY}) (rate({metrics.TTFT_SECONDS_COUNT}[1m]))"
    ),
}


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # time.monotonic() when the queries completed
    by_pod: dict[str, LoadSample] = field(default_factory=dict)
    by_pool: dict[tuple[str, str], LoadSample] = field(default_factory=dict)  # per replica
    inflight_at: dict[str, int] = field(default_factory=dict)


def snapshot_from_results(results: dict[str, list[dict[str, Any]]], taken_at: float) -> Snapshot:
    """Pure: PromQL vectors to per-pod and per-pool (per-replica average) samples."""
    per_pod: defaultdict[tuple[str, str, str, str], dict[str, float]] = defaultdict(dict)
    for name, vector in results.items():
        for series in vector:
            labels = series.get("metric", {})
            try:
                value = float(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if math.isnan(value) or math.isinf(value):
                continue
            key = (
                labels.get(metrics.POD_SERIES_LABEL, ""),
                labels.get(names.FACTORY_LABEL, ""),
                labels.get(names.POOL_LABEL, ""),
                labels.get(names.REGION_LABEL, ""),
            )
            per_pod[key][name] = value
    by_pod: dict[str, LoadSample] = {}
    pools: defaultdict[tuple[str, str], list[LoadSample]] = defaultdict(list)
    for (pod, factory, pool, region), vals in per_pod.items():
        sample = LoadSample(
            waiting=vals.get("waiting", 0.0),
            running=vals.get("running", 0.0),
            kv_usage=vals.get("kv"),
            ttft_ms=vals["ttft"] * 1000.0 if "ttft" in vals else None,
        )
        if pod:
            by_pod[pod] = sample
        pools[(pool, region)].append(sample)
        if factory and pool:  # the name Kubernetes discovery knows the pool by
            pools[(names.pool_object_name(factory, pool), region)].append(sample)
    by_pool = {key: _average(samples) for key, samples in pools.items()}
    return Snapshot(taken_at=taken_at, by_pod=by_pod, by_pool=by_pool)


def _average(samples: list[LoadSample]) -> LoadSample:
    n = len(samples)
    kvs = [s.kv_usage for s in samples if s.kv_usage is not None]
    ttfts = [s.ttft_ms for s in samples if s.ttft_ms is not None]
    return LoadSample(
        waiting=sum(s.waiting for s in samples) / n,
        running=sum(s.running for s in samples) / n,
        kv_usage=sum(kvs) / len(kvs) if kvs else None,
        ttft_ms=sum(ttfts) / len(ttfts) if ttfts else None,
    )


class PrometheusPoller:
    """Polls Prometheus and hands each good snapshot to `on_snapshot`."""

    def __init__(
        self,
        url: str,
        interval: float,
        timeout: float,
        on_snapshot: Callable[[Snapshot], None],
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.on_snapshot = on_snapshot
        self.on_error = on_error
        self.failures = 0  # consecutive
        self.last_error: str | None = None
        self._prom: Any = None

    def _client(self) -> Any:
        if self._prom is None:
            # No retries inside a poll: the next poll is the retry.
            self._prom = PrometheusConnect(
                url=self.url, disable_ssl=False, retry=Retry(total=0), timeout=self.timeout
            )
        return self._prom

    def _query_all(self) -> dict[str, list[dict[str, Any]]]:
        prom = self._client()
        return {name: prom.custom_query(q) for name, q in QUERIES.items()}

    async def poll_once(self) -> bool:
        try:
            results = await asyncio.to_thread(self._query_all)
        except Exception as exc:  # any failure of the source is "no fresh data"
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if self.failures == 1 or self.failures % 30 == 0:
                log.warning(
                    "prometheus poll failed (%d in a row): %s", self.failures, self.last_error
                )
            if self.on_error is not None:
                self.on_error(self.last_error)
            return False
        self.failures = 0
        self.last_error = None
        self.on_snapshot(snapshot_from_results(results, time.monotonic()))
        return True

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await self.poll_once()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))
