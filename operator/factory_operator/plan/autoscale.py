"""``decide``: the autoscaler's pure decision for one pool (issue 17).

pool shape + settings + observed load + the pool's memory + now -> desired replicas, reason,
new memory. No I/O and no clock: the caller reads Prometheus and the Deployment, and keeps the
memory in the factory's status (``PoolStatus.autoscaling``, see ``to_status``/``from_status``).

How a count is recommended (the busiest signal wins):

- demand: requests running + waiting + held by the router for this pool, projected over the
  pool's expected startup time when it grows (so that capacity arrives before the queue
  does), against ``maxNumSeqs x batchUtilization`` requests per replica;
- a queue beyond ``waitingPerReplica``: enough replicas for each to carry what the ready ones
  run now (less than a batch when the KV cache is full) plus that queue; a queue never lets
  a pool shrink to where it would be over its target again;
- KV-cache usage and TTFT p95 per ready replica against their targets, as the HPA does:
  ``ceil(ready x observed / target)``; TTFT grows a pool above its SLO and holds it near its
  SLO, never shrinks it.

A signal within ``TOLERANCE`` of its target keeps the current count. Then:

- up is fast: at once (or after ``scaleUp.stabilizationSeconds``: the lowest recommendation
  of that window), at most ``scaleUp.maxStepReplicas`` at a time; from zero at once when the
  router holds requests for the pool;
- down is slow: never within ``scaleDown.cooldownSeconds`` of the last change (nor within
  the expected startup time of a scale-up, so that what it asked for arrives), only to the
  highest recommendation of the ``scaleDown.stabilizationSeconds`` window, at most
  ``scaleDown.maxStepReplicas`` at a time;
- a pool with ``replicas.min`` 0 keeps one replica until it has been idle (no request
  anywhere) for ``scaleDown.idleSeconds``, then goes to zero;
- always within ``[min, max]``; a pool with ``min == max`` or policy ``off`` runs ``min``;
  without metrics (Prometheus down) the count is held.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from factory_operator.api.accelerators import AcceleratorKind
from factory_operator.api.autoscaling import (
    MAX_RECOMMENDATIONS,
    TOLERANCE,
    Direction,
    EffectiveAutoscaling,
    PoolAutoscalingStatus,
    ScaleRecommendation,
)

# Vendor-neutral batch capacity when engine.args.maxNumSeqs is unset: vLLM 0.32 defaults to
# 256 on accelerators under 70 GiB and on A100, 1024 on larger ones (EngineArgs,
# _set_default_max_num_seqs_and_batched_tokens_args). The lower figure errs on more replicas;
# the KV-cache and waiting signals catch a pool that is full before its batch is.
DEFAULT_MAX_NUM_SEQS = 256


@dataclass(frozen=True)
class PoolShape:
    """What the spec says about one pool."""

    min: int
    max: int
    kind: AcceleratorKind = "nvidia"
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS


@dataclass(frozen=True)
class PoolLoad:
    """Live load of one pool from Prometheus: sums over its replicas, except the averages."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float | None = None  # mean over ready replicas, in [0, 1]
    ttft_p95_seconds: float | None = None
    pending: float = 0.0  # requests the router holds for this pool (scale from zero)
    # Demand growth in requests per second (e.g. PromQL deriv()); None: from the memory.
    growth_per_second: float | None = None
    # Tokens generated per second by the whole pool (its price per token); None: unknown.
    tokens_per_second: float | None = None

    @property
    def demand(self) -> float:
        """Requests in the system for this pool."""
        return self.running + self.waiting + self.pending


@dataclass(frozen=True)
class PoolObserved:
    """One pool as observed: the Deployment's counts and, when Prometheus answered, its load."""

    current: int  # the Deployment's spec.replicas
    ready: int
    load: PoolLoad | None = None


@dataclass(frozen=True)
class ScaleState:
    """What the autoscaler remembers about a pool between decisions."""

    last_scale_time: datetime | None = None
    last_scale_direction: Direction | None = None
    idle_since: datetime | None = None
    demand: float | None = None
    demand_time: datetime | None = None
    # (time, replicas), oldest first; equal neighbours coalesced (see _remember).
    recommendations: tuple[tuple[datetime, int], ...] = ()


@dataclass(frozen=True)
class Decision:
    """The autoscaler's answer for one pool."""

    desired: int
    current: int
    reason: str
    message: str
    state: ScaleState = field(default_factory=ScaleState)
    # What the load asks for before bounds, windows and steps (for the jurisdiction arbiter).
    wanted: int = 0
    per_replica: float = 0.0  # requests one replica should carry
    before: ScaleState = field(default_factory=ScaleState)  # the memory it started from

    @property
    def direction(self) -> Direction | None:
        """Up, Down, or None when the count stays."""
        if self.desired == self.current:
            return None
        return "Up" if self.desired > self.current else "Down"


def _ceil(x: float) -> int:
    # Guards against 2.0000000001 -> 3 from float division.
    return max(0, math.ceil(x - 1e-9))


def _within(ratio: float) -> bool:
    return abs(ratio - 1.0) <= TOLERANCE


def _remember(
    previous: Sequence[tuple[datetime, int]], now: datetime, replicas: int, horizon: float
) -> tuple[tuple[datetime, int], ...]:
    """Append a recommendation, drop those older than the longest window, stay bounded.

    Neighbours with the same count are coalesced into the later time. Past the bound the two
    oldest are merged into (later time, larger count): a window's maximum can only grow
    (slower scale-down) and its minimum too (sooner scale-up), never the risky way."""
    kept = [(t, r) for t, r in previous if (now - t).total_seconds() <= horizon and t <= now]
    if kept and kept[-1][1] == replicas:
        kept[-1] = (now, replicas)
    else:
        kept.append((now, replicas))
    while len(kept) > MAX_RECOMMENDATIONS:
        (_, r0), (t1, r1) = kept[0], kept[1]
        kept[:2] = [(t1, max(r0, r1))]
    return tuple(kept)


def _window(history: Sequence[tuple[datetime, int]], now: datetime, seconds: int) -> list[int]:
    return [r for t, r in history if (now - t).total_seconds() <= seconds]


def _growth(load: PoolLoad, state: ScaleState, now: datetime) -> float:
    if load.growth_per_second is not None:
        return max(0.0, load.growth_per_second)
    if state.demand is None or state.demand_time is None:
        return 0.0
    elapsed = (now - state.demand_time).total_seconds()
    return max(0.0, (load.demand - state.demand) / elapsed) if elapsed > 0 else 0.0


def recommend(
    shape: PoolShape,
    settings: EffectiveAutoscaling,
    observed: PoolObserved,
    load: PoolLoad,
    growth: float,
) -> tuple[int, str]:
    """Replicas the load asks for, unbounded, and the signal that asked for them."""
    per_replica = shape.max_num_seqs * settings.batch_utilization
    # A trend from a few samples is a guess: the projection at most doubles the demand.
    ahead = min(growth * settings.expected_startup_seconds, load.demand)
    projected = load.demand + ahead
    current, ready = observed.current, observed.ready
    if current > 0 and _within(projected / (current * per_replica)):
        by_demand = current
    else:
        by_demand = _ceil(projected / per_replica)
    why = f"{load.demand:g} requests"
    if ahead > 0:
        why += f" ({projected:g} projected over {settings.expected_startup_seconds} s)"
    terms = [(by_demand, f"{why} at {per_replica:g} per replica")]
    limit = settings.waiting_per_replica * (1 + TOLERANCE)
    if ready > 0 and load.waiting > ready * limit:
        # A queue beyond its target: each replica carries what it runs now (less than its batch
        # when the KV cache is full) plus the target queue.
        carried = load.running / ready + settings.waiting_per_replica
        queued = load.waiting / ready / settings.waiting_per_replica
        terms.append(
            (
                _ceil((load.running + load.waiting) / carried),
                f"{load.waiting:g} waiting ({queued:.2f} x target per replica)",
            )
        )
    elif load.waiting > 0:
        # Never shrink to a count at which today's queue would be over its target again.
        terms.append((_ceil(load.waiting / limit), f"{load.waiting:g} waiting"))
    if ready > 0:
        ratios = []
        if load.kv_cache_usage is not None:
            ratios.append((load.kv_cache_usage / settings.kv_cache_usage, "KV-cache usage"))
        if settings.ttft_p95_ms is not None and load.ttft_p95_seconds is not None:
            ttft = load.ttft_p95_seconds * 1000 / settings.ttft_p95_ms
            # The SLO grows a pool over it and, near it, keeps it from shrinking (fewer
            # replicas would push it over); it never shrinks one on its own.
            if ttft > 1 + TOLERANCE:
                ratios.append((ttft, "TTFT p95 over its SLO"))
            elif ttft > 1 - 2 * TOLERANCE:
                terms.append((ready, f"TTFT p95 at {ttft:.2f} x its SLO"))
        for ratio, name in ratios:
            count = ready if _within(ratio) else _ceil(ready * ratio)
            terms.append((count, f"{name} at {ratio:.2f} x target"))
    count, why = max(terms, key=lambda term: term[0])
    return count, why


def decide(
    shape: PoolShape,
    settings: EffectiveAutoscaling,
    observed: PoolObserved,
    state: ScaleState,
    now: datetime,
) -> Decision:
    """The desired replica count of one pool now, why, and the memory for the next decision."""
    current = observed.current
    per_replica = shape.max_num_seqs * settings.batch_utilization

    def answer(
        desired: int, reason: str, message: str, memory: ScaleState, wanted: int
    ) -> Decision:
        return Decision(desired, current, reason, message, memory, wanted, per_replica, state)

    def hold(
        reason: str, message: str, memory: ScaleState = state, wanted: int | None = None
    ) -> Decision:
        return answer(current, reason, message, memory, current if wanted is None else wanted)

    def scale(desired: int, reason: str, message: str, memory: ScaleState, wanted: int) -> Decision:
        direction: Direction = "Up" if desired > current else "Down"
        memory = replace(memory, last_scale_time=now, last_scale_direction=direction)
        return answer(desired, reason, message, memory, wanted)

    if shape.min == shape.max or settings.policy == "off":
        # Never touched; what the load asks for is still reported (CapacityPressure).
        load = observed.load
        wanted = shape.min
        if load is not None:
            wanted, _ = recommend(shape, settings, observed, load, _growth(load, state, now))
        if shape.min == shape.max:
            return answer(shape.min, "Pinned", "replicas.min == replicas.max: not autoscaled",
                          state, wanted)  # fmt: skip
        return answer(shape.min, "AutoscalingOff", "autoscaling policy off: runs replicas.min",
                      state, wanted)  # fmt: skip
    if current < shape.min:
        return scale(shape.min, "BelowMin", f"raised to replicas.min {shape.min}", state, shape.min)
    if current > shape.max:
        return scale(
            shape.max, "AboveMax", f"lowered to replicas.max {shape.max}", state, shape.max
        )
    load = observed.load
    if load is None:
        return hold("NoMetrics", "no load metrics (Prometheus unavailable): count held")

    demand = load.demand
    idle_since = (state.idle_since or now) if demand == 0 else None
    growth = _growth(load, state, now)
    wanted, why = recommend(shape, settings, observed, load, growth)
    idle_for = (now - idle_since).total_seconds() if idle_since else 0.0
    idle_over = idle_since is not None and idle_for >= settings.idle_seconds
    floor = shape.min
    if shape.min == 0 and (demand > 0 or (current > 0 and not idle_over)):
        floor = 1
    target = min(max(wanted, floor), shape.max)
    horizon = max(settings.up_stabilization_seconds, settings.down_stabilization_seconds)
    memory = replace(
        state,
        idle_since=idle_since,
        demand=demand,
        demand_time=now,
        recommendations=_remember(state.recommendations, now, target, horizon),
    )
    since_change = (
        (now - state.last_scale_time).total_seconds() if state.last_scale_time else math.inf
    )
    # After a scale-up, the replicas it asked for get their expected startup time to arrive
    # before anything is taken away (a Neuron pool starts slower than its window expires).
    settle = settings.down_cooldown_seconds
    if state.last_scale_direction == "Up":
        settle = max(settle, settings.expected_startup_seconds)
    cooling = since_change < settle

    if current == 0:
        if target == 0:
            return hold("ScaledToZero", "no demand: stays at zero", memory, wanted)
        desired = min(target, settings.up_max_step_replicas)
        return scale(desired, "ScaleFromZero", f"{why}: needs {wanted}", memory, wanted)
    if shape.min == 0 and idle_over and target == 0:
        if cooling:
            return hold(
                "Cooldown",
                f"idle {idle_for:.0f} s; last change {since_change:.0f} s ago",
                memory,
                wanted,
            )
        return scale(0, "Idle", f"no request for {idle_for:.0f} s: scaled to zero", memory, 0)
    if target > current:
        lowest = min(_window(memory.recommendations, now, settings.up_stabilization_seconds))
        if lowest <= current:
            return hold(
                "Stabilizing",
                f"{why}: needs {target}, waiting out the scale-up window",
                memory,
                wanted,
            )
        desired = min(lowest, current + settings.up_max_step_replicas)
        return scale(desired, "ScaleUp", f"{why}: needs {wanted}", memory, wanted)
    if target < current:
        if cooling:
            return hold(
                "Cooldown",
                f"{why}: needs {target}; last change {since_change:.0f} s ago, "
                f"no scale-down within {settle} s of it",
                memory,
                wanted,
            )
        highest = max(_window(memory.recommendations, now, settings.down_stabilization_seconds))
        if highest >= current:
            return hold(
                "Stabilizing",
                f"{why}: needs {target}; {highest} recommended within "
                f"{settings.down_stabilization_seconds} s",
                memory,
                wanted,
            )
        desired = max(highest, current - settings.down_max_step_replicas)
        return scale(desired, "ScaleDown", f"{why}: needs {target}", memory, wanted)
    return hold("Steady", f"{why}: {current} replicas fit", memory, wanted)


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_status(status: PoolAutoscalingStatus | None) -> ScaleState:
    """The memory kept in a pool's status (none yet: a fresh memory)."""
    if status is None:
        return ScaleState()
    return ScaleState(
        last_scale_time=_time(status.last_scale_time),
        last_scale_direction=status.last_scale_direction,
        idle_since=_time(status.idle_since),
        demand=status.demand,
        demand_time=_time(status.demand_time),
        recommendations=tuple(
            (t, r.replicas) for r in status.recommendations if (t := _time(r.time)) is not None
        ),
    )


def to_status(decision: Decision) -> PoolAutoscalingStatus:
    """The decision and its memory as the pool's status (times to the second)."""
    s = decision.state
    return PoolAutoscalingStatus(
        desired_replicas=decision.desired,
        current_replicas=decision.current,
        reason=decision.reason,
        message=decision.message[:1024],
        last_scale_time=_text(s.last_scale_time) if s.last_scale_time else None,
        last_scale_direction=s.last_scale_direction,
        idle_since=_text(s.idle_since) if s.idle_since else None,
        demand=s.demand,
        demand_time=_text(s.demand_time) if s.demand_time else None,
        recommendations=[
            ScaleRecommendation(time=_text(t), replicas=r) for t, r in s.recommendations
        ],
    )
