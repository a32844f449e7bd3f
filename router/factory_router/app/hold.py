"""Scale from zero in the proxy path: hold a request while its model's compliant pools start,
and export the held demand for the operator (issue 17, item 3).

`plan_or_hold` replaces `state.plan` for a client request. When the plan finds no candidate
(`ModelNotFound` or `NoCompliantBackend`) but the model has compliant pools that are at zero
or starting (`Fleet.waking`), the request is held:

- in a bounded queue per model (`HoldConfig.max_requests`; full: 503 `scaling_from_zero` with
  `Retry-After` at once);
- for a bounded time (`HoldConfig.timeout_seconds`, narrowed by the client's
  `x-factory-hold-timeout`; waited out: 503 `scaling_from_zero` with `Retry-After`);
- looking every `HoldConfig.poll_seconds` for a plan; the first one with a replica that is not
  terminating is returned and the request goes on as any other (ranking, failover within its
  candidates);
- with no compliant pool left to wait for (factory deleted, region changed): the residency
  filter's own error at once. A client that goes away cancels the hold and releases its place.

While held, a request counts on one pool (`policy.hold.choose_pool`) in the gauge
`factory_router_pending_requests{namespace,factory,pool,region,jurisdiction,model}` on the
admin listener; `factory_router_held_requests_total{model,outcome}` counts how holds ended
(`served`, `timeout`, `full`, `gone`, `cancelled`). The operator's autoscaler reads the gauge
from Prometheus and scales that pool from zero; the router itself writes nothing to the
Kubernetes API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from factory_router.policy.config import HoldConfig
from factory_router.policy.errors import ModelNotFound, NoCompliantBackend, ScalingFromZero
from factory_router.policy.fleet import Fleet, Pool
from factory_router.policy.hold import (
    HOLD_TIMEOUT_HEADER,
    HoldBook,
    PendingKey,
    choose_pool,
    has_coming_replica,
    hold_timeout,
)
from factory_router.policy.policies import RouteRequest
from factory_router.policy.route import RoutePlan

if TYPE_CHECKING:
    from factory_router.app.state import RouterState

log = logging.getLogger("factory_router.hold")
_PENDING_LABELS = ("namespace", "factory", "pool", "region", "jurisdiction", "model")


class Holds:
    """The held requests of one router instance and their metrics (a collector read at
    scrape time: nothing is updated per request but two dicts)."""

    def __init__(self, config: HoldConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.book = HoldBook(config.max_requests)
        self._outcomes: dict[tuple[str, str], int] = {}
        if registry is not None:
            registry.register(self)

    def count(self, model: str, outcome: str) -> None:
        key = (model, outcome)
        self._outcomes[key] = self._outcomes.get(key, 0) + 1

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "factory_router_pending_requests",
            "Requests held now for a pool at zero replicas or starting, on the one pool that "
            "should wake up (the operator scales it from zero).",
            labels=_PENDING_LABELS,
        )
        for key, value in self.book.pending():
            labels = [key.namespace, key.factory, key.pool, key.region, key.jurisdiction]
            pending.add_metric([*labels, key.model], value)
        yield pending
        held = CounterMetricFamily(
            "factory_router_held_requests",
            "Requests held for a pool scaling from zero, by how the hold ended.",
            labels=("model", "outcome"),
        )
        for (model, outcome), value in list(self._outcomes.items()):
            held.add_metric([model, outcome], value)
        yield held


def _pending_key(fleet: Fleet, pool: Pool) -> PendingKey:
    region = pool.region or "none"
    known = fleet.regions.get(region)
    jurisdiction = known.jurisdiction if known is not None else None
    return PendingKey(
        pool.namespace, pool.factory, pool.name, region, jurisdiction or "none", pool.model
    )


def _choose(state: RouterState, pools: list[Pool], client_region: str | None) -> PendingKey:
    fleet, scoring = state.fleet, state.config.scoring
    pool = choose_pool(pools, lambda region: fleet.rtt.rtt_ms(client_region, region, scoring))
    return _pending_key(fleet, pool)


async def plan_or_hold(
    state: RouterState, req: RouteRequest, headers: Mapping[str, str]
) -> RoutePlan:
    """A plan for the request, at once or after holding it (see the module docstring)."""
    try:
        return state.plan(req)
    except (ModelNotFound, NoCompliantBackend) as refused:
        first: ModelNotFound | NoCompliantBackend = refused
    pools = state.fleet.waking(req.model, req.allowed)
    if not pools:
        raise first
    holds = state.holds
    cfg = holds.config
    timeout = hold_timeout(headers.get(HOLD_TIMEOUT_HEADER), cfg.timeout_seconds)
    key = _choose(state, pools, req.client_region)
    if not holds.book.admit(key):
        holds.count(req.model, "full")
        raise ScalingFromZero(
            f"The model's compliant pools are starting and {holds.book.held(req.model)} "
            f"requests already wait for them; retry in {cfg.retry_after_seconds}s.",
            retry_after=cfg.retry_after_seconds,
        )
    started = time.monotonic()
    deadline = started + timeout
    outcome = "cancelled"
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                outcome = "timeout"
                raise ScalingFromZero(
                    f"No compliant backend became ready within {timeout:g}s while the "
                    f"model's pools scale from zero; retry in {cfg.retry_after_seconds}s.",
                    retry_after=cfg.retry_after_seconds,
                )
            await asyncio.sleep(min(cfg.poll_seconds, left))
            try:
                route = state.plan(req)
            except (ModelNotFound, NoCompliantBackend) as refused:
                pools = state.fleet.waking(req.model, req.allowed)
                if not pools:
                    outcome = "gone"
                    raise refused from None
                moved = _choose(state, pools, req.client_region)
                holds.book.move(key, moved)
                key = moved
                continue
            if not has_coming_replica(ranked.backend for ranked in route.ordered):
                continue  # only replicas on their way out: wait for one that is coming
            outcome = "served"
            log.info(
                "held request routed",
                extra={
                    "fields": {
                        "request_id": req.request_key,
                        "model": req.model,
                        "pool": key.pool,
                        "held_ms": round((time.monotonic() - started) * 1000, 1),
                    }
                },
            )
            return route
    finally:
        holds.book.release(key)
        holds.count(req.model, outcome)
