"""The economics timer's I/O (issue 19, item 4): the gauges the recording rules price pools
with, and each pool's cost per million tokens in the factory's status.

Run by the ``factory-economics`` timer, at most once a minute per factory
(``ECONOMICS_INTERVAL_SECONDS``), never by the other reconciles: a quiet fleet's reconcile
reads no Prometheus and writes nothing for it. Per run:

- the operator's gauges: every FleetRegion's price and power per accelerator type, and the
  factory's accelerators per replica (``OperatorMetrics.set_region_economics``,
  ``set_pool_accelerators``);
- with a Prometheus (``--prometheus-url``), one instant query: tokens (prompt + generated)
  per second by pool over the last 5 minutes, the window of the recording rules::

      sum by (pool) (rate(vllm:prompt_tokens_total{namespace, factory}[5m]))
        + sum by (pool) (rate(vllm:generation_tokens_total{namespace, factory}[5m]))

  evaluated at the run's own time, written as ``costsTime`` (so the figure can be recomputed
  from the same samples), then ``plan.economics.pool_costs`` and a status patch (``pools``,
  ``costs``, ``costsTime``) only when a cost changed at its 4 significant digits. Prometheus
  failing: nothing written, the last costs stay (logged), as for the autoscaler.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from factory_operator.api import FleetRegion, InferenceFactory
from factory_operator.plan.economics import pool_costs, with_costs

from .cache import TOP_LEVEL, Watched
from .client import Kube
from .load import QUERY_TIMEOUT_SECONDS, Vector
from .metrics import OperatorMetrics

log = logging.getLogger(__name__)

ECONOMICS_INTERVAL_SECONDS = 60.0  # "refreshed at most once a minute"
RATE_WINDOW = "5m"  # the recording rules' window (deploy/monitoring/alerts.yaml)
FACTORY_API = "inference.factory.dev/v1alpha1"
Obj = dict[str, Any]
TimedQuery = Callable[[str, float], Vector]  # PromQL, evaluation time (Unix seconds)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def tokens_query(namespace: str, factory: str) -> str:
    """PromQL: tokens per second by pool of one factory."""
    match = f'namespace="{_escape(namespace)}", factory="{_escape(factory)}"'
    return " + ".join(
        f"sum by (pool) (rate(vllm:{name}_tokens_total{{{match}}}[{RATE_WINDOW}]))"
        for name in ("prompt", "generation")
    )


def tokens_from_vector(vector: Vector) -> dict[str, float]:
    """Pure: the query's answer as pool -> tokens per second (finite values only)."""
    out: dict[str, float] = {}
    for series in vector:
        pool = series.get("metric", {}).get("pool")
        try:
            value = float(series["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if pool and math.isfinite(value):
            out[pool] = value
    return out


class TokenReader:
    """Reads a factory's tokens per second by pool from one Prometheus."""

    def __init__(
        self, url: str, timeout: float = QUERY_TIMEOUT_SECONDS, query: TimedQuery | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        self._query = query  # test seam; default: prometheus-api-client, built on first use

    def _read(self, namespace: str, factory: str, at: float) -> dict[str, float]:
        if self._query is None:
            # No retries inside a read: the next tick is the retry.
            prom = PrometheusConnect(url=self.url, retry=Retry(total=0), timeout=self.timeout)

            def run(promql: str, when: float) -> Vector:
                result: Vector = prom.custom_query(promql, params={"time": when})
                return result

            self._query = run
        return tokens_from_vector(self._query(tokens_query(namespace, factory), at))

    async def read(self, namespace: str, factory: str, at: float) -> dict[str, float] | None:
        """Tokens per second by pool at ``at`` (Unix seconds), or None when Prometheus did
        not answer (logged)."""
        try:
            return await asyncio.to_thread(self._read, namespace, factory, at)
        except Exception as exc:  # any failure of the source is "no figures"
            log.warning(
                "token read from %s failed for %s/%s: %s: %s",
                self.url,
                namespace,
                factory,
                type(exc).__name__,
                str(exc)[:300],
            )
            return None


def region_models(objects: Iterable[Mapping[str, Any]]) -> dict[str, FleetRegion]:
    """FleetRegions by name, from the watch's objects (one the model refuses is skipped)."""
    keys = ("apiVersion", "kind", "metadata", "spec", "status")
    regions = {}
    for obj in objects:
        try:
            region = FleetRegion.model_validate({k: obj[k] for k in keys if k in obj})
        except ValueError:
            continue
        regions[region.name] = region
    return regions


def export_gauges(
    metrics: OperatorMetrics, factory: InferenceFactory, regions: Mapping[str, FleetRegion]
) -> None:
    """Prices and power of every region, accelerators per replica of the factory's pools."""
    prices = {
        (name, kind): float(value)
        for name, region in regions.items()
        for kind, value in (region.spec.pricing or {}).items()
    }
    power = {
        (name, kind): float(value)
        for name, region in regions.items()
        for kind, value in (region.spec.power or {}).items()
    }
    metrics.set_region_economics(prices, power)
    namespace = factory.metadata.namespace or ""
    pools: dict[tuple[str, ...], int] = {}
    for pool in factory.spec.pools:
        region = regions.get(pool.region)
        jurisdiction = region.spec.jurisdiction if region else ""
        labels = (
            pool.name,
            pool.region,
            jurisdiction,
            factory.spec.model.name,
            pool.accelerator.kind,
            pool.accelerator.type,
        )
        pools[labels] = pool.accelerator.count
    metrics.set_pool_accelerators(namespace, factory.metadata.name, pools)


async def refresh_economics(
    kube: Kube,
    factory: InferenceFactory,
    regions: Mapping[str, FleetRegion],
    metrics: OperatorMetrics,
    tokens: TokenReader | None,
    *,
    now: datetime,
) -> Obj | None:
    """One run of the economics timer at ``now`` (whole seconds, UTC); returns the API
    server's answer to the status patch, None when nothing was written."""
    export_gauges(metrics, factory, regions)
    if tokens is None or factory.status is None or factory.metadata.deletion_timestamp:
        return None
    namespace = factory.metadata.namespace or "default"
    rates = await tokens.read(namespace, factory.metadata.name, now.timestamp())
    if rates is None:
        return None
    status = factory.status
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    updated = with_costs(status, pool_costs(factory, regions, rates), stamp)
    if updated is status:
        return None
    wire = updated.to_wire()
    patch = {"pools": wire.get("pools", []), "costs": wire.get("costs", ""), "costsTime": stamp}
    return await kube.patch_status(
        FACTORY_API, "InferenceFactory", factory.metadata.name, namespace, patch
    )


async def economics_tick(
    kube: Kube,
    body: Mapping[str, Any],
    watched: Watched,
    metrics: OperatorMetrics,
    tokens: TokenReader | None,
) -> None:
    """The timer's run for one factory, from the watches (own status writes included):
    the newer of kopf's body and the operator's last status patch, and every FleetRegion."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name", "")
    seen = {k: body[k] for k in TOP_LEVEL if k in body}
    live = watched.own.fresher("InferenceFactory", namespace, name, seen)
    if live is None:
        return
    try:
        factory = InferenceFactory.model_validate({k: live[k] for k in TOP_LEVEL if k in live})
    except ValueError:
        return  # the reconcile reports a refused spec
    now = datetime.now(UTC).replace(microsecond=0)
    regions = region_models(watched.region_objects())
    answer = await refresh_economics(kube, factory, regions, metrics, tokens, now=now)
    if answer:
        watched.own.wrote(answer)
