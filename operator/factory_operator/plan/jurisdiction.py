"""Growth inside jurisdictions (issue 17, item 2): which pools grow first, and
``CapacityPressure`` when a jurisdiction's pools are all at ``replicas.max``.

Each pool's decision (``plan.autoscale.decide``) sees only its own load. Granting every pool
its own growth would grow all the pools of a jurisdiction for one surge, so the growth they
ask for is pooled here, in requests, per jurisdiction, and handed out in the order the
router prefers pools: nearer the demand first (within ``NEAR_MS`` of the nearest counts as
equally near), then cheaper per token (``FleetRegion.spec.pricing``), then by name. A pool
that already runs more than its own load asks for takes growth into that spare room first
(no new replica: the router's load-aware choice sends the overflow there); a pool grows by
at most its scale-up step, up to its max; what no pool of the jurisdiction can take, once
all are at max, is ``CapacityPressure``. Growth never crosses a jurisdiction: the router
does not send that data elsewhere, so neither does the capacity follow it there.

A pool whose region is unknown or whose jurisdiction the factory does not allow is never
deployed (``plan_factory``); here it gets no decision at all and counts for nothing.
Holds and bounds corrections pass through unchanged; so do scale-downs, except while the
jurisdiction is short (some pool asks for growth): capacity the jurisdiction needs is not
taken away, and the pool that would have shrunk takes its share of the growth instead
(``Spill``). Without this a pool granted another pool's growth shrinks on its own load at the
next decision and is granted it again at the one after: a flap.

The missing capacity is what the load asks for beyond what every pool runs at its ceiling,
summed over the jurisdiction (a pool with room to spare offsets another's shortfall: the
router's load-aware choice sends it there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from factory_operator.api import Condition

from .autoscale import Decision, PoolShape
from .status import condition

# Latencies this close to the nearest pool's count as equally near (EU regions are 20-30 ms
# apart: between them price decides).
NEAR_MS = 30.0


@dataclass(frozen=True)
class Candidate:
    """One pool serving the model, with its decision and what ranks it."""

    key: str  # unique among candidates, e.g. "<namespace>/<factory>/<pool>"
    jurisdiction: str | None  # its region's; None: the region is unknown
    allowed: bool  # the factory's residency allows that jurisdiction
    shape: PoolShape
    decision: Decision
    up_step: int  # scaleUp.maxStepReplicas in force for the pool
    distance_ms: float | None = None  # round trip from where the demand comes; None: unknown
    price_per_hour: float | None = None  # one replica-hour (pricing[type] x accelerator count)
    tokens_per_second: float | None = None  # observed per replica, when known


@dataclass(frozen=True)
class CapacityPressure:
    """A jurisdiction whose pools are all at their ceiling (max; min when pinned or off) and
    still short."""

    jurisdiction: str
    missing_requests: float
    missing_replicas: int  # in replicas of its preferred pool
    pools: tuple[str, ...]

    @property
    def message(self) -> str:
        """For the condition and the Event."""
        return (
            f"{self.jurisdiction}: every pool at its ceiling ({', '.join(self.pools)}); "
            f"{self.missing_requests:g} requests, about {self.missing_replicas} more "
            f"replicas of {self.pools[0]}, have nowhere compliant to go"
        )


@dataclass(frozen=True)
class JurisdictionPlan:
    """Decisions after arbitration, by candidate key (none for blocked pools)."""

    decisions: Mapping[str, Decision]
    order: Mapping[str, tuple[str, ...]]  # jurisdiction -> its pools, preferred first
    pressure: tuple[CapacityPressure, ...] = ()
    blocked: tuple[str, ...] = ()


def _rank(pools: Sequence[Candidate]) -> list[Candidate]:
    nearest = min((c.distance_ms for c in pools if c.distance_ms is not None), default=0.0)
    # One cost basis for all or none: dollars per token where every pool's throughput and
    # price are known, else dollars per request slot (price / requests one replica carries).
    by_token = all(c.tokens_per_second and c.price_per_hour is not None for c in pools)

    def cost(c: Candidate) -> float:
        if c.price_per_hour is None:
            return math.inf
        if by_token and c.tokens_per_second:
            return c.price_per_hour / (c.tokens_per_second * 3600)
        return c.price_per_hour / max(c.decision.per_replica, 1e-9)

    def key(c: Candidate) -> tuple[float, float, str]:
        distance = math.inf if c.distance_ms is None else c.distance_ms
        tier = 0.0 if distance <= nearest + NEAR_MS else distance
        return (tier, cost(c), c.key)

    return sorted(pools, key=key)


# Decisions whose growth is pooled and handed out again; bounds corrections (BelowMin,
# AboveMax), windows and scale-downs pass through untouched.
_POOLED = frozenset({"ScaleUp", "ScaleFromZero", "Steady"})
# Pools that run a fixed count: they never grow, but what they cannot serve is still missing.
_FIXED = frozenset({"Pinned", "AutoscalingOff"})


def _ceiling(c: Candidate) -> int:
    return c.shape.min if c.decision.reason in _FIXED else c.shape.max


def _asks(c: Candidate) -> float:
    """Requests of growth this pool's load asks for, beyond max included."""
    d = c.decision
    if d.reason in _FIXED:
        return max(0, d.wanted - d.desired) * d.per_replica
    if d.reason in _POOLED:  # desired: a pool from zero asks for one replica at least
        return max(0, max(d.wanted, d.desired) - d.current) * d.per_replica
    return 0.0


# Decisions that shrink a pool: held while the jurisdiction is short.
_SHRINKS = frozenset({"ScaleDown", "Idle"})


def _grant(d: Decision, desired: int, note: str, now: datetime) -> Decision:
    if desired == d.desired:
        return d
    if desired == d.current:
        memory = replace(
            d.state,
            last_scale_time=d.before.last_scale_time,
            last_scale_direction=d.before.last_scale_direction,
        )
        return replace(d, desired=desired, reason="Deferred", message=note, state=memory)
    memory = replace(d.state, last_scale_time=now, last_scale_direction="Up")
    return replace(d, desired=desired, reason="ScaleUp", message=note, state=memory)


def plan_jurisdictions(candidates: Sequence[Candidate], now: datetime) -> JurisdictionPlan:
    """Arbitrate the growth of every jurisdiction among its pools."""
    blocked = tuple(c.key for c in candidates if not c.allowed or c.jurisdiction is None)
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.allowed and c.jurisdiction is not None:
            groups.setdefault(c.jurisdiction, []).append(c)
    decisions: dict[str, Decision] = {}
    order: dict[str, tuple[str, ...]] = {}
    pressure: list[CapacityPressure] = []
    for jurisdiction, pools in sorted(groups.items()):
        ranked = _rank(pools)
        order[jurisdiction] = tuple(c.key for c in ranked)
        left = sum(_asks(c) for c in ranked)
        preference = ", ".join(order[jurisdiction])
        short = left > 0
        for c in ranked:
            d = c.decision
            # Room a pool already runs beyond its own load takes growth first, in the same
            # order, before any new replica: capacity granted at the last decision (and still
            # starting, or not yet sent traffic by the router) is not granted again.
            spare = max(0, d.current - d.wanted) * d.per_replica
            left = max(0.0, left - spare)
            if short and d.reason in _SHRINKS:
                note = f"{d.message}; kept: {jurisdiction}'s pools ask for {left:g} more requests"
                d = replace(_grant(d, d.current, note, now), reason="Spill")
            elif d.reason not in _POOLED:
                decisions[c.key] = d
                continue
            room = max(0, min(c.shape.max, d.current + c.up_step) - d.current)
            take = min(room, math.ceil(left / d.per_replica - 1e-9)) if left > 0 else 0
            left = max(0.0, left - take * d.per_replica)
            if take > 0:
                note = f"{d.message}; takes {take} of {jurisdiction}'s growth ({preference})"
                decisions[c.key] = _grant(d, d.current + take, note, now)
            elif d.direction == "Up":
                note = f"{d.message}; {jurisdiction}'s growth goes first to {preference}"
                decisions[c.key] = _grant(d, d.current, note, now)
            else:
                decisions[c.key] = d
        full = all(decisions[c.key].desired >= _ceiling(c) for c in ranked)
        missing = sum(
            (c.decision.wanted - decisions[c.key].desired) * c.decision.per_replica for c in ranked
        )
        if short and full and missing > 0:
            pressure.append(
                CapacityPressure(
                    jurisdiction=jurisdiction,
                    missing_requests=round(missing, 3),
                    missing_replicas=math.ceil(missing / ranked[0].decision.per_replica - 1e-9),
                    pools=order[jurisdiction],
                )
            )
    return JurisdictionPlan(decisions, order, tuple(pressure), blocked)


def pressure_condition(
    pressure: Sequence[CapacityPressure],
    *,
    generation: int | None,
    now: str,
    previous: Sequence[Condition],
) -> Condition:
    """``CapacityPressure`` condition: True naming each short jurisdiction, else False."""
    if pressure:
        return condition(
            "CapacityPressure",
            "True",
            "AllPoolsAtMax",
            "; ".join(p.message for p in pressure),
            generation=generation,
            now=now,
            previous=previous,
        )
    return condition(
        "CapacityPressure",
        "False",
        "WithinCapacity",
        "every jurisdiction's demand fits its pools",
        generation=generation,
        now=now,
        previous=previous,
    )


def replica_price(pricing: Mapping[str, float] | None, type_: str, count: int) -> float | None:
    """Price of one replica-hour from ``FleetRegion.spec.pricing`` (per accelerator-hour)."""
    if not pricing or type_ not in pricing:
        return None
    return pricing[type_] * count
