"""``plan_autoscaling``: the autoscaler for one factory (pure), built from ``decide`` (one pool)
and ``plan_jurisdictions`` (growth inside each jurisdiction).

factory spec + FleetRegions + what each pool runs and carries + the memory kept in the
factory's status + now -> per pool the desired replicas and its status, the Events that say
why, and the jurisdictions under CapacityPressure. The k8s layer reads the load (off the
request path) and writes the result through the usual apply path; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from factory_operator.api import FleetRegion, InferenceFactory, Pool
from factory_operator.api.autoscaling import PoolAutoscalingStatus, effective_autoscaling

from .autoscale import DEFAULT_MAX_NUM_SEQS, PoolObserved, PoolShape, decide, from_status, to_status
from .engine import merge_engine
from .jurisdiction import Candidate, CapacityPressure, plan_jurisdictions, replica_price
from .planner import PlannedEvent


@dataclass(frozen=True)
class PoolScale:
    """The autoscaler's outcome for one pool."""

    desired: int
    status: PoolAutoscalingStatus


@dataclass(frozen=True)
class AutoscalePlan:
    """The autoscaler's outcome for one factory."""

    pools: Mapping[str, PoolScale] = field(default_factory=dict)
    events: Sequence[PlannedEvent] = ()
    pressure: Sequence[CapacityPressure] = ()
    # mode external: publish the desired counts as a metric, leave the replicas to KEDA/HPA.
    external: bool = False


def batch_capacity(factory: InferenceFactory, pool: Pool) -> int:
    """Sequences one replica batches: engine.args.maxNumSeqs (pool over factory) or vLLM's
    conservative default."""
    args = merge_engine(factory.spec.engine, pool.engine).args
    return args.max_num_seqs if args and args.max_num_seqs else DEFAULT_MAX_NUM_SEQS


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
            )
        )
    arbitrated = plan_jurisdictions(candidates, now)
    pools: dict[str, PoolScale] = {}
    events: list[PlannedEvent] = []
    for name, decision in arbitrated.decisions.items():
        pools[name] = PoolScale(decision.desired, to_status(decision))
        if decision.direction is not None:
            events.append(
                PlannedEvent(
                    "Normal",
                    "ScaledUp" if decision.direction == "Up" else "ScaledDown",
                    f"pool {name}: {decision.current} -> {decision.desired} replicas "
                    f"({decision.reason}): {decision.message}",
                )
            )
    events.extend(
        PlannedEvent("Warning", "CapacityPressure", p.message) for p in arbitrated.pressure
    )
    external = factory.spec.autoscaling is not None and factory.spec.autoscaling.mode == "external"
    return AutoscalePlan(pools, events, arbitrated.pressure, external)
