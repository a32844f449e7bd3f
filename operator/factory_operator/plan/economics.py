"""Unit economics of a factory's pools (issue 19, item 4), pure.

Cost per million tokens, provisioned: every ready replica is billed, busy or not, at its
region's ``spec.pricing`` for its accelerator type times the accelerators it takes, over the
tokens (prompt + generated) its pool processed per hour::

    cost = 1e6 * ready replicas * accelerators per replica * USD per accelerator-hour
           / (3600 * tokens per second)

The same formula as the recording rule ``factory:pool_cost_per_million_tokens:
provisioned_rate5m`` of deploy/monitoring, so the factory's status and the dashboards agree.
A pool without tokens, ready replicas or a price has no cost (None), never 0 or infinity.

The operator's economics timer (``k8s.economics``) writes it into ``status.pools[]``; every
other reconcile keeps the values of the last refresh (``keep_costs``), so the two never fight
and an idle reconcile neither reads Prometheus nor writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from factory_operator.api import FleetRegion, InferenceFactory, InferenceFactoryStatus, PoolStatus

SECONDS_PER_HOUR = 3600.0
TOKENS_PER_UNIT = 1e6  # cost per million tokens
SIGNIFICANT_DIGITS = 4  # what status shows: finer changes would be writes without meaning


def _lookup(table: Mapping[str, float] | None, accelerator_type: str) -> float | None:
    """A value of spec.pricing/spec.power by accelerator type: the exact key, as the recording
    rules join the operator's gauges on it (H100, L4, inf2...)."""
    return table.get(accelerator_type) if table else None


def accelerator_price(region: FleetRegion | None, accelerator_type: str) -> float | None:
    """USD per accelerator-hour of this type in the region, when priced."""
    return _lookup(region.spec.pricing, accelerator_type) if region else None


def accelerator_power(region: FleetRegion | None, accelerator_type: str) -> float | None:
    """Watts per accelerator of this type in the region, when known."""
    power = region.spec.power if region else None
    return _lookup({k: float(v) for k, v in power.items()} if power else None, accelerator_type)


def cost_per_million_tokens(
    price_per_accelerator_hour: float,
    accelerators_per_replica: int,
    replicas: int,
    tokens_per_second: float,
) -> float | None:
    """USD per million tokens with every replica billed; None without tokens or replicas."""
    if tokens_per_second <= 0 or replicas <= 0:
        return None
    per_hour = price_per_accelerator_hour * accelerators_per_replica * replicas
    return TOKENS_PER_UNIT * per_hour / (SECONDS_PER_HOUR * tokens_per_second)


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def pool_costs(
    factory: InferenceFactory,
    regions: Mapping[str, FleetRegion],
    tokens_per_second: Mapping[str, float],
) -> dict[str, float | None]:
    """Each pool's cost per million tokens (rounded to 4 significant digits), from its ready
    replicas as the factory's status reports them and its tokens per second."""
    ready = {p.name: p.ready_replicas for p in (factory.status.pools if factory.status else [])}
    costs: dict[str, float | None] = {}
    for pool in factory.spec.pools:
        price = accelerator_price(regions.get(pool.region), pool.accelerator.type)
        tokens = tokens_per_second.get(pool.name, 0.0)
        replicas = ready.get(pool.name, 0)
        costs[pool.name] = _rounded(
            None
            if price is None
            else cost_per_million_tokens(price, pool.accelerator.count, replicas, tokens)
        )
    return costs


def summary(pools: Sequence[PoolStatus]) -> str:
    """``status.costs`` for kubectl: ``dub=0.42,fra=0.51``, pools with a cost only."""
    return ",".join(
        f"{p.name}={p.cost_per_million_tokens:g}"
        for p in pools
        if p.cost_per_million_tokens is not None
    )


def with_costs(
    status: InferenceFactoryStatus, costs: Mapping[str, float | None], now: str
) -> InferenceFactoryStatus:
    """The status with these costs in its pools (a pool not in ``costs`` has none), stamped
    ``now``; the same status when nothing changed (no write, no new stamp)."""
    pools = [
        p.model_copy(update={"cost_per_million_tokens": costs.get(p.name)}) for p in status.pools
    ]
    if pools == list(status.pools):
        return status
    return status.model_copy(update={"pools": pools, "costs": summary(pools), "costs_time": now})


def keep_costs(
    status: InferenceFactoryStatus, previous: InferenceFactoryStatus | None
) -> InferenceFactoryStatus:
    """A freshly planned status with the costs of the last economics refresh carried over
    (by pool name): only the economics timer changes them."""
    if previous is None:
        return status
    kept = {p.name: p.cost_per_million_tokens for p in previous.pools}
    pools = [
        p.model_copy(update={"cost_per_million_tokens": kept.get(p.name)}) for p in status.pools
    ]
    return status.model_copy(
        update={"pools": pools, "costs": summary(pools), "costs_time": previous.costs_time}
    )
