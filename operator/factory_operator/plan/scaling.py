"""``plan_autoscaling``: the autoscaler for one factory (pure), built from ``decide`` (one pool)
and ``plan_jurisdictions`` (growth inside each jurisdiction).

factory spec + FleetRegions + what each pool runs and carries + the memory kept in the
factory's status + now -> per pool the desired replicas and its status, the Events that say
why, and the jurisdictions under CapacityPressure. The k8s layer reads the load (off the
request path) and writes the result through the usual apply path; nothing here does I/O.

Three outcomes feed ``plan_factory``, one per situation of a reconcile:

- ``plan_autoscaling`` (via ``autoscale_pools``): the autoscaler's timer read the load;
- ``hold_at_min``: the timer has no Prometheus to read (no ``--prometheus-url``);
- ``held_autoscaling``: any other reconcile (create, update, resume, resync, a child's
  event) keeps the counts the last decision wrote into status, so that only the timer moves
  them and the two never fight.

A factory is autoscaled only with ``spec.autoscaling`` (``autoscaled``): opt in, as with an
HPA, so that installing this operator over running factories changes no replica count;
``autoscaling: {}`` is the balanced policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from factory_operator.api import FleetRegion, InferenceFactory, Pool
from factory_operator.api.autoscaling import Direction, PoolAutoscalingStatus, effective_autoscaling

from .autoscale import (
    DEFAULT_MAX_NUM_SEQS,
    Decision,
    PoolLoad,
    PoolObserved,
    PoolShape,
    decide,
    from_status,
    to_status,
)
from .engine import merge_engine
from .jurisdiction import Candidate, CapacityPressure, plan_jurisdictions, replica_price
from .observed import DeploymentInfo
from .planner import PlannedEvent


@dataclass(frozen=True)
class PoolScale:
    """The autoscaler's outcome for one pool."""

    desired: int
    status: PoolAutoscalingStatus
    direction: Direction | None = None  # a decision that changed the count: which way


@dataclass(frozen=True)
class AutoscalePlan:
    """The autoscaler's outcome for one factory."""

    pools: Mapping[str, PoolScale] = field(default_factory=dict)
    events: Sequence[PlannedEvent] = ()
    pressure: Sequence[CapacityPressure] = ()
    # mode external: publish the desired counts as a metric, leave the replicas to KEDA/HPA.
    external: bool = False
    # No decision was taken (held_autoscaling): the CapacityPressure condition stays as it is.
    held: bool = False


def batch_capacity(factory: InferenceFactory, pool: Pool) -> int:
    """Sequences one replica batches: engine.args.maxNumSeqs (pool over factory) or vLLM's
    conservative default."""
    args = merge_engine(factory.spec.engine, pool.engine).args
    return args.max_num_seqs if args and args.max_num_seqs else DEFAULT_MAX_NUM_SEQS


def _replica_throughput(seen: PoolObserved) -> float | None:
    """Tokens per second one ready replica generates, when the pool has generated any."""
    tokens = seen.load.tokens_per_second if seen.load is not None else None
    if not tokens or tokens <= 0 or seen.ready <= 0:
        return None
    return tokens / seen.ready


def plan_autoscaling(
    factory: InferenceFactory,
    regions: Mapping[str, FleetRegion],
    observed: Mapping[str, PoolObserved],
    now: datetime,
    distances_ms: Mapping[str, float] | None = None,
) -> AutoscalePlan:
    """Desired replicas per pool. A pool absent from ``observed`` is not this operator's to
    decide (another region's operator runs it) and gets no entry; neither does a pool whose
    region is unknown or outside ``spec.residency`` (never deployed, never scaled).
    ``distances_ms``: round trip from where the demand comes to each pool, when known."""
    allowed = factory.spec.residency.jurisdictions if factory.spec.residency else None
    memory = {p.name: p.autoscaling for p in factory.status.pools} if factory.status else {}
    candidates = []
    for pool in factory.spec.pools:
        seen = observed.get(pool.name)
        if seen is None:
            continue
        region = regions.get(pool.region)
        jurisdiction = region.spec.jurisdiction if region else None
        kind = pool.accelerator.kind
        config = effective_autoscaling(factory.spec.autoscaling, kind)
        shape = PoolShape(pool.replicas.min, pool.replicas.max, kind, batch_capacity(factory, pool))
        candidates.append(
            Candidate(
                key=pool.name,
                jurisdiction=jurisdiction,
                allowed=region is not None and (allowed is None or jurisdiction in allowed),
                shape=shape,
                decision=decide(shape, config, seen, from_status(memory.get(pool.name)), now),
                up_step=config.up_max_step_replicas,
                distance_ms=(distances_ms or {}).get(pool.name),
                price_per_hour=replica_price(
                    region.spec.pricing if region else None,
                    pool.accelerator.type,
                    pool.accelerator.count,
                ),
                tokens_per_second=_replica_throughput(seen),
            )
        )
    arbitrated = plan_jurisdictions(candidates, now)
    external = is_external(factory)
    pools: dict[str, PoolScale] = {}
    events: list[PlannedEvent] = []
    for name, decision in arbitrated.decisions.items():
        pools[name] = PoolScale(decision.desired, to_status(decision), decision.direction)
        if decision.direction is not None:
            events.append(scale_event(name, decision, external))
    # One Warning when a jurisdiction comes under pressure, not one per decision while it is.
    before = _previous_pressure(factory)
    events.extend(
        PlannedEvent("Warning", "CapacityPressure", p.message)
        for p in arbitrated.pressure
        if f"{p.jurisdiction}: " not in before
    )
    return AutoscalePlan(pools, events, arbitrated.pressure, external)


def _previous_pressure(factory: InferenceFactory) -> str:
    """The message of a CapacityPressure condition that is True now ('' when none): it names
    each short jurisdiction as '<jurisdiction>: ...'."""
    conditions = factory.status.conditions if factory.status else []
    kept = next((c for c in conditions if c.type == "CapacityPressure"), None)
    return kept.message if kept is not None and kept.status == "True" else ""


def scale_event(pool: str, decision: Decision, external: bool) -> PlannedEvent:
    """ScaledUp/ScaledDown: the pool, the counts, the reason and the signal that decided."""
    verb = "ScaledUp" if decision.direction == "Up" else "ScaledDown"
    counts = f"{decision.current} -> {decision.desired} replicas"
    if external:
        counts = f"desired {counts}, published for KEDA/HPA"
    return PlannedEvent(
        "Normal", verb, f"pool {pool}: {counts} ({decision.reason}): {decision.message}"
    )


def autoscaled(factory: InferenceFactory) -> bool:
    """Whether the autoscaler runs for this factory: only with ``spec.autoscaling``."""
    return factory.spec.autoscaling is not None


def is_external(factory: InferenceFactory) -> bool:
    """Mode external: the desired counts are published, the replicas left to KEDA/HPA."""
    return factory.spec.autoscaling is not None and factory.spec.autoscaling.mode == "external"


def _memory(factory: InferenceFactory) -> dict[str, PoolAutoscalingStatus]:
    pools = factory.status.pools if factory.status else []
    return {p.name: p.autoscaling for p in pools if p.autoscaling is not None}


def _decidable(factory: InferenceFactory, regions: Mapping[str, FleetRegion], pool: Pool) -> bool:
    """A pool the autoscaler may decide: its region is known and the residency allows it."""
    region = regions.get(pool.region)
    allowed = factory.spec.residency.jurisdictions if factory.spec.residency else None
    return region is not None and (allowed is None or region.spec.jurisdiction in allowed)


def observe_pools(
    factory: InferenceFactory,
    deployments: Mapping[str, DeploymentInfo],
    loads: Mapping[str, PoolLoad] | None,
    local_region: str | None = None,
) -> dict[str, PoolObserved]:
    """``decide``'s view of each pool this operator runs (``local_region``: only that one's).

    A pool without a Deployment yet counts as at replicas.min (it is created there). Mode
    external: the count is the autoscaler's own last desired one, not the Deployment's
    (which follows it only as fast as KEDA/HPA do), so that its windows and events are its
    own. ``loads`` None (Prometheus did not answer) is no load for every pool; a pool missing
    from the answer has no samples: no load at all when none of its replicas is ready (nothing
    to scrape), no metrics (count held) when some are (a scrape problem is not zero demand).
    """
    memory = _memory(factory) if is_external(factory) else {}
    seen: dict[str, PoolObserved] = {}
    for pool in factory.spec.pools:
        if local_region is not None and pool.region != local_region:
            continue
        running = deployments.get(pool.name)
        current = running.spec_replicas if running else pool.replicas.min
        ready = running.ready_replicas if running else 0
        if pool.name in memory:
            current = memory[pool.name].desired_replicas
        load = None
        if loads is not None:
            load = loads.get(pool.name, PoolLoad() if ready == 0 else None)
        seen[pool.name] = PoolObserved(current, ready, load)
    return seen


def _actual(plan: AutoscalePlan, deployments: Mapping[str, DeploymentInfo]) -> AutoscalePlan:
    """Mode external: status shows the Deployment's own count as current."""
    if not plan.external:
        return plan
    pools = {}
    for name, scale in plan.pools.items():
        running = deployments.get(name)
        current = running.spec_replicas if running else scale.status.current_replicas
        status = scale.status.model_copy(update={"current_replicas": current})
        pools[name] = PoolScale(scale.desired, status, scale.direction)
    return replace(plan, pools=pools)


def autoscale_pools(
    factory: InferenceFactory,
    regions: Mapping[str, FleetRegion],
    deployments: Mapping[str, DeploymentInfo],
    loads: Mapping[str, PoolLoad] | None,
    now: datetime,
    *,
    local_region: str | None = None,
) -> AutoscalePlan:
    """One decision of the autoscaler's timer: ``plan_autoscaling`` over what was observed."""
    seen = observe_pools(factory, deployments, loads, local_region)
    return _actual(plan_autoscaling(factory, regions, seen, now), deployments)


def hold_at_min(
    factory: InferenceFactory,
    regions: Mapping[str, FleetRegion],
    deployments: Mapping[str, DeploymentInfo],
    *,
    local_region: str | None = None,
) -> AutoscalePlan:
    """No load source (the operator has no Prometheus URL): every pool runs replicas.min and
    its status says why; no CapacityPressure can be known."""
    external = is_external(factory)
    message = (
        "the operator has no Prometheus URL (--prometheus-url): held at replicas.min "
        "instead of autoscaled"
    )
    pools: dict[str, PoolScale] = {}
    events: list[PlannedEvent] = []
    for pool in factory.spec.pools:
        if (local_region is not None and pool.region != local_region) or not _decidable(
            factory, regions, pool
        ):
            continue
        running = deployments.get(pool.name)
        current = running.spec_replicas if running else pool.replicas.min
        desired = pool.replicas.min
        status = PoolAutoscalingStatus(
            desired_replicas=desired, current_replicas=current, reason="NoLoadSource",
            message=message,
        )  # fmt: skip
        decision = Decision(desired, current, "NoLoadSource", message)
        changed = decision.direction if not external else None
        pools[pool.name] = PoolScale(desired, status, changed)
        if changed is not None:
            events.append(scale_event(pool.name, decision, external))
    return AutoscalePlan(pools, events, (), external)


def held_autoscaling(
    factory: InferenceFactory,
    regions: Mapping[str, FleetRegion],
    deployments: Mapping[str, DeploymentInfo],
    *,
    local_region: str | None = None,
) -> AutoscalePlan:
    """A reconcile that is not the autoscaler's decision: each pool keeps the count its last
    decision wrote into status (within today's bounds: the spec may have moved them); a pool
    not decided yet keeps its Deployment's count within bounds (replicas.min for a new one),
    so that turning autoscaling on moves nothing by itself. Pinned pools and policy off run
    replicas.min. No events; the CapacityPressure condition stays as it is."""
    memory = _memory(factory)
    external = is_external(factory)
    pools: dict[str, PoolScale] = {}
    for pool in factory.spec.pools:
        if (local_region is not None and pool.region != local_region) or not _decidable(
            factory, regions, pool
        ):
            continue
        low, high = pool.replicas.min, pool.replicas.max
        running = deployments.get(pool.name)
        current = running.spec_replicas if running else low
        kept = memory.get(pool.name)
        config = effective_autoscaling(factory.spec.autoscaling, pool.accelerator.kind)
        if low == high or config.policy == "off":
            desired = low
        elif kept is not None:
            desired = min(max(kept.desired_replicas, low), high)
        else:
            desired = min(max(current, low), high)
        if kept is not None:
            status = kept.model_copy(
                update={"desired_replicas": desired, "current_replicas": current}
            )
        else:
            status = PoolAutoscalingStatus(
                desired_replicas=desired, current_replicas=current, reason="Pending",
                message="no decision of the autoscaler yet",
            )  # fmt: skip
        pools[pool.name] = PoolScale(desired, status)
    return AutoscalePlan(pools, (), (), external, held=True)
