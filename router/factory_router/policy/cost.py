"""A pool's cost per million tokens, the figure the score's cost term weighs (pure).

    cost_ms = ScoringConfig.cost_weight_ms * cost     (USD per million tokens)

Sources, per pool (discovery gathers them, `PoolPrice`):

- **live**: ``status.pools[].costPerMillionTokens``, written by the operator's economics
  timer at most once a minute: every ready replica billed at its region's list price,
  over the tokens (prompt + generated) the pool processed in the last 5 minutes;
- **list**: the region's ``spec.pricing`` for the pool's accelerator type x accelerators
  per replica, USD per replica-hour.

The two are in different units; the list price becomes a cost per token through the fleet
itself: ``estimate = list x k``, k = the median of live / list over the pools of the same
model that have both (tokens a replica-hour buys lately), else over every such pool of the
fleet, else ``1e6 / (3600 x CostConfig.nominal_tokens_per_second)`` (nothing live: every
pool on the same nominal throughput, so the list-price order). A pool without a live figure
(not serving yet, no Prometheus) takes its estimate ("list").

A live figure is held within [floor_fraction, ceiling_multiple] x the pool's estimate
("floored", "capped"): a 0 would draw every request its way, and a pool that served a
trickle is dear per token because it was idle (bill / few tokens), which would keep it
idle. A pool priced at 0 costs 0: it is free, and the cost term can favour it by at most
``cost_weight_ms`` x the others' costs. A pool with no price at all ("unpriced") neither wins
nor loses by it: the median cost of the model's priced pools (its live figure, if any, held
within the same bounds around that median); with no priced pool of the model, its live
figure or 0.
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from factory_router.policy.config import CostConfig

SECONDS_PER_HOUR = 3600.0
TOKENS_PER_UNIT = 1e6

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class PoolPrice:
    """What is known of one pool's cost."""

    model: str
    live_per_mtok: float | None = None  # status.pools[].costPerMillionTokens
    list_per_hour: float | None = None  # USD per replica-hour; None: not priced


@dataclass(frozen=True)
class Cost:
    """The cost the score uses, USD per million tokens, and where it comes from."""

    per_mtok: float
    source: str  # live, floored, capped, list, unpriced, none


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _bounded(live: float, reference: float, cfg: CostConfig) -> Cost:
    low, high = cfg.floor_fraction * reference, cfg.ceiling_multiple * reference
    if live < low:
        return Cost(low, "floored")
    if live > high:
        return Cost(high, "capped")
    return Cost(live, "live")


def resolve_costs(prices: Mapping[K, PoolPrice], cfg: CostConfig) -> dict[K, Cost]:
    """Each pool's cost per million tokens (see the module docstring)."""
    ratios: dict[str, list[float]] = {}
    for p in prices.values():
        if p.live_per_mtok and p.list_per_hour:  # a 0 is no evidence of a price per token
            ratios.setdefault(p.model, []).append(p.live_per_mtok / p.list_per_hour)
    fleet_k = _median([r for rs in ratios.values() for r in rs])
    nominal_k = TOKENS_PER_UNIT / (SECONDS_PER_HOUR * cfg.nominal_tokens_per_second)
    out: dict[K, Cost] = {}
    for key, p in prices.items():
        if p.list_per_hour is None:
            continue
        if p.list_per_hour == 0:
            out[key] = Cost(0.0, "list")
            continue
        k = _median(ratios.get(p.model, [])) or fleet_k or nominal_k
        estimate = p.list_per_hour * k
        live = p.live_per_mtok
        out[key] = Cost(estimate, "list") if live is None else _bounded(live, estimate, cfg)
    priced: dict[str, list[float]] = {}
    for key, c in out.items():
        priced.setdefault(prices[key].model, []).append(c.per_mtok)
    for key, p in prices.items():
        if p.list_per_hour is not None:
            continue
        neutral = _median(priced.get(p.model, []))
        live = p.live_per_mtok
        if neutral is None:
            out[key] = Cost(live, "live") if live is not None else Cost(0.0, "none")
        elif live is None or neutral == 0:
            out[key] = Cost(neutral, "unpriced")
        else:
            out[key] = _bounded(live, neutral, cfg)
    return out
