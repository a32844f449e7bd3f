"""``plan_factory``: the one pure function every handler calls.

spec + regions + observed world -> children to apply, children to delete, status, events.
Residency fails closed: a pool whose FleetRegion is unknown or whose jurisdiction is not
allowed is never deployed, and its running children are deleted; the other pools run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from factory_operator.api import (
    FleetRegion,
    InferenceFactory,
    InferenceFactoryStatus,
    Pool,
    PoolStatus,
)
from factory_operator.api.errors import SpecError

from .economics import keep_costs
from .engine import merge_engine, resolve_profile, revision_hash, tensor_parallel_size, vllm_args
from .jurisdiction import pressure_condition
from .observed import ChildRef, Observed, PodProblem
from .placement import Placement, ambiguity, candidate_nodes, place, region_scheme
from .rollout import GateReport
from .rollout_plan import GatesRequest, PoolOutcome, plan_rollout
from .settings import OperatorSettings
from .status import summarize
from .storage import shared_volume_problem
from .workload import (
    Manifest,
    PoolContext,
    deployment,
    pod_disruption_budget,
    pod_monitor,
    rolling_update,
    service,
    service_endpoint,
)

if TYPE_CHECKING:  # scaling builds PlannedEvents: imported for the annotations only
    from .scaling import AutoscalePlan, PoolScale

STOP_REASONS = {"ResidencyViolation", "UnknownRegion", "AcceleratorTypeAmbiguous"}


@dataclass(frozen=True)
class PlannedEvent:
    """A Kubernetes Event to record on the factory."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """What one reconcile should do."""

    apply: list[Manifest] = field(default_factory=list)
    delete: list[ChildRef] = field(default_factory=list)
    status: InferenceFactoryStatus = field(default_factory=InferenceFactoryStatus)
    events: list[PlannedEvent] = field(default_factory=list)
    permanent_error: str | None = None
    # A rollout step whose gates are due (the rollout timer judges them, then plans again).
    gates: GatesRequest | None = None


def _blocked(
    pool: Pool, jurisdiction: str | None, reason: str, message: str, ready: int
) -> PoolOutcome:
    return PoolOutcome(
        PoolStatus(
            name=pool.name,
            region=pool.region,
            jurisdiction=jurisdiction,
            state="Blocked",
            reason=reason,
            desired_replicas=0,
            ready_replicas=ready,
        ),
        message,
    )


def _capacity_gap(
    pool: Pool, selector: dict[str, str], placement: Placement, observed: Observed
) -> str | None:
    """Why no node can host one replica, or None when one can."""
    resource = placement.resource
    wanted = {**selector, **(pool.node_selector or {})}
    best = max((n.allocatable.get(resource, 0)
                for n in candidate_nodes(observed.nodes, wanted, placement.requirement)
                if n.ready and n.schedulable), default=0)  # fmt: skip
    if best >= pool.accelerator.count:
        return None
    return (
        f"needs {pool.accelerator.count} {resource} ({pool.accelerator.type}) per replica; "
        f"the largest matching node in region {pool.region} offers {best}"
    )


def spec_revision(factory: InferenceFactory, pool: Pool, settings: OperatorSettings) -> str | None:
    """The pool revision the spec asks for, wherever the pool runs (blocked or not; None when
    its engine cannot be rendered): the factory revision covers every pool, so that a pool
    blocked or unblocked by its region does not make a new revision."""
    engine = merge_engine(factory.spec.engine, pool.engine)
    profile = resolve_profile(pool, engine, settings)
    if profile is None:
        return None
    try:
        tp = tensor_parallel_size(pool, engine)
    except SpecError:
        return None
    args = vllm_args(
        factory, pool, engine, profile, tp, shutdown_timeout=settings.shutdown_timeout_seconds
    )
    env = {e.name: e.value for e in (engine.env or [])}
    return revision_hash(
        profile.image, factory.spec.model.uri, factory.spec.model.revision, args, env
    )


def _plan_pool(
    factory: InferenceFactory,
    pool: Pool,
    regions: Mapping[str, FleetRegion],
    observed: Observed,
    settings: OperatorSettings,
    *,
    volume_problem: str | None = None,
    scale: PoolScale | None = None,
    external: bool = False,
) -> PoolOutcome:
    running = observed.deployments.get(pool.name)
    ready = running.ready_replicas if running else 0
    region = regions.get(pool.region)
    if region is None:
        return _blocked(
            pool,
            None,
            "UnknownRegion",
            f"FleetRegion {pool.region} does not exist; not deployed",
            ready,
        )
    jurisdiction = region.spec.jurisdiction
    allowed = factory.spec.residency.jurisdictions if factory.spec.residency else None
    if allowed is not None and jurisdiction not in allowed:
        return _blocked(
            pool,
            jurisdiction,
            "ResidencyViolation",
            f"region {pool.region} is in {jurisdiction}, outside "
            f"spec.residency.jurisdictions {sorted(allowed)}; not deployed",
            ready,
        )
    if settings.region is not None and pool.region != settings.region:
        return PoolOutcome(
            PoolStatus(
                name=pool.name,
                region=pool.region,
                jurisdiction=jurisdiction,
                state="ManagedElsewhere",
                reason="ManagedElsewhere",
                desired_replicas=pool.replicas.min,
                ready_replicas=0,
            ),
            f"reconciled by the operator of region {pool.region}",
        )
    scheme = region_scheme(region, settings)
    unclear = ambiguity(pool, region, scheme)
    if unclear is not None:
        return _blocked(pool, jurisdiction, "AcceleratorTypeAmbiguous", unclear, ready)
    engine = merge_engine(factory.spec.engine, pool.engine)
    profile = resolve_profile(pool, engine, settings)
    if profile is None:
        return _blocked(
            pool,
            jurisdiction,
            "NoDefaultImage",
            f"no known vLLM image for neuron type {pool.accelerator.type}: set engine.image",
            ready,
        )
    try:
        tp = tensor_parallel_size(pool, engine)
    except SpecError as err:
        return _blocked(pool, jurisdiction, "InvalidSpec", str(err), ready)

    args = vllm_args(
        factory, pool, engine, profile, tp, shutdown_timeout=settings.shutdown_timeout_seconds
    )
    env = {e.name: e.value for e in (engine.env or [])}
    revision = revision_hash(
        profile.image, factory.spec.model.uri, factory.spec.model.revision, args, env
    )
    selector = region.spec.selector(region.name)
    ctx = PoolContext(
        factory,
        pool,
        engine,
        profile,
        args,
        revision,
        jurisdiction,
        selector,
        settings,
        place(pool, scheme, selector, observed.nodes),
    )
    workload = deployment(ctx)
    children = [workload, service(ctx), pod_disruption_budget(ctx)]
    if observed.podmonitor_crd:
        children.append(pod_monitor(ctx))

    desired = pool.replicas.min
    if scale is not None and not external:  # the autoscaler's count, through the same apply
        desired = scale.desired
        workload["spec"]["replicas"] = desired
        workload["spec"]["strategy"]["rollingUpdate"] = rolling_update(desired, pool.replicas.max)
    elif scale is not None and running is not None:
        # Mode external: the count is KEDA's or the HPA's. Created at min, then never in the
        # manifest again (k8s.apply hands the field over so that dropping it keeps it).
        desired = running.spec_replicas
        del workload["spec"]["replicas"]
    current = (
        running is not None
        and running.revision == revision
        and running.spec_replicas == desired
        and running.observed_generation >= running.generation
    )
    problems = [p for p in observed.problems if p.pool == pool.name]
    rejected = [p for p in problems if p.reason == "FailedCreate"]
    if running is not None and running.replica_failure:
        rejected.append(PodProblem(pool.name, "FailedCreate", running.replica_failure))
    unschedulable = [
        p
        for p in problems
        if p.reason == "Unschedulable"
        and (
            "Insufficient" in p.message
            or "nvidia.com/gpu" in p.message
            or "aws.amazon.com/neuron" in p.message
        )
    ]
    gap = _capacity_gap(pool, selector, ctx.placement, observed) if desired else None
    reason: str | None = None
    message = ""
    if rejected:
        reason, message = "PodsRejected", rejected[0].message
    elif unschedulable or (gap and ready < desired):
        reason = "InsufficientAccelerators"
        message = gap or unschedulable[0].message
    elif volume_problem and desired:
        reason, message = "VolumeNotShared", volume_problem
    if reason:
        state = "Degraded"
    elif current and ready >= desired:
        state = "Running"
    else:
        state = "Progressing"
    return PoolOutcome(
        PoolStatus(
            name=pool.name,
            region=pool.region,
            jurisdiction=jurisdiction,
            state=state,
            reason=reason,
            desired_replicas=desired,
            ready_replicas=ready if running and running.revision == revision else 0,
            endpoint=service_endpoint(ctx),
            revision=revision,
            autoscaling=scale.status if scale is not None else None,
        ),
        message,
        children,
        ctx,
    )


def plan_factory(
    factory: InferenceFactory,
    regions: Mapping[str, FleetRegion],
    observed: Observed,
    settings: OperatorSettings,
    autoscale: AutoscalePlan | None = None,
    *,
    gates: GateReport | None = None,
) -> Plan:
    """Desired children, deletions, status and events for one factory. With ``autoscale``
    (``plan_autoscaling``'s outcome), its pools run the autoscaler's counts (mode external:
    a new Deployment starts at replicas.min and its count is then left to KEDA/HPA), show its
    decisions in status, and the factory gets its events and the CapacityPressure condition
    (kept as it was when ``autoscale.held``: a reconcile that did not read the load). The
    rollout (``plan.rollout_plan``) holds stables and adds canaries; ``gates`` is the
    judgement of a step whose gates were due (only the rollout timer passes one)."""
    local = [
        p
        for p in factory.spec.pools
        if p.region in regions and (settings.region is None or p.region == settings.region)
    ]
    volume_problem = shared_volume_problem(
        factory, observed.claims, sum(p.replicas.min for p in local)
    )
    scales = autoscale.pools if autoscale is not None else {}
    outcomes = [
        _plan_pool(
            factory,
            pool,
            regions,
            observed,
            settings,
            volume_problem=volume_problem,
            scale=scales.get(pool.name),
            external=autoscale is not None and autoscale.external,
        )
        for pool in factory.spec.pools
    ]
    for pool, outcome in zip(factory.spec.pools, outcomes, strict=True):
        outcome.revision = outcome.status.revision or spec_revision(factory, pool, settings)
    rollout = plan_rollout(factory, outcomes, observed, gates)
    apply = [child for o in outcomes for child in o.children]
    wanted = {(c["kind"], c["metadata"]["name"]) for c in apply} | rollout.keep
    delete = [c for c in observed.children if (c.kind, c.name) not in wanted]
    stopping = {c.pool for c in delete if c.kind == "Deployment"}
    events = [
        PlannedEvent("Warning", "PoolStopped", f"pool {o.status.name} stopped: {o.message}")
        for o in outcomes
        if o.status.reason in STOP_REASONS and o.status.name in stopping
    ]

    pools = [o.status for o in outcomes]
    previous = factory.status.conditions if factory.status else []
    conditions = summarize(
        pools,
        {o.status.name: o.message for o in outcomes},
        generation=factory.metadata.generation,
        now=observed.now,
        previous=previous,
    )
    events.extend(PlannedEvent(*event) for event in rollout.events)
    if rollout.condition is not None:
        conditions.append(rollout.condition)
    if autoscale is not None:
        events.extend(autoscale.events)
        kept = next((c for c in previous if c.type == "CapacityPressure"), None)
        if autoscale.held and kept is not None:
            conditions.append(kept)  # only a decision (the autoscaler's timer) moves it
        else:
            conditions.append(
                pressure_condition(
                    autoscale.pressure,
                    generation=factory.metadata.generation,
                    now=observed.now,
                    previous=previous,
                )
            )
    ready_pools = sum(1 for p in pools if p.state == "Running")
    running_in = sorted(
        {
            p.jurisdiction
            for p in pools
            if p.jurisdiction and p.state in {"Running", "Progressing", "Degraded"}
        }
    )
    status = InferenceFactoryStatus(
        observed_generation=factory.metadata.generation,
        conditions=conditions,
        pools=pools,
        ready_pools=ready_pools,
        total_pools=len(pools),
        pools_ready=f"{ready_pools}/{len(pools)}",
        jurisdictions=",".join(running_in),
        rollout=rollout.status,
    )
    # Costs per million tokens change only on the economics timer (plan.economics).
    status = keep_costs(status, factory.status)
    invalid = [o.message for o in outcomes if o.status.reason == "InvalidSpec"]
    return Plan(
        apply=apply,
        delete=delete,
        status=status,
        events=events,
        permanent_error="; ".join(invalid) or None,
        gates=rollout.gates,
    )
