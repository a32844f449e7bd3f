"""The rollout applied to one reconcile's pools: the state machine's directives
(``plan.rollout.next_rollout``) turned into children and status.

Per pool: a stable Deployment the rollout holds is left as it runs (not applied, not
deleted: its template stays the stable revision's, and its count too); a canary gets its
Deployment (``workload.canary_deployment``) and ``status.pools[].canary`` (the router's
split); a canary no longer wanted is deleted with the other unwanted children.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from factory_operator.api import Condition, InferenceFactory, PoolStatus
from factory_operator.api.rollout import PoolCanaryStatus, RolloutStatus, RolloutStep

from .observed import DeploymentInfo, Observed
from .rollout import GateReport, PoolView, RolloutDecision, factory_revision, next_rollout
from .status import condition
from .workload import Manifest, PoolContext, canary_deployment


@dataclass
class PoolOutcome:
    """One pool's planned status, the message behind its reason, its children, and (when
    it is deployed here) what rendered them."""

    status: PoolStatus
    message: str = ""
    children: list[Manifest] = field(default_factory=list)
    ctx: PoolContext | None = None
    # The pool revision the spec asks for, also when the pool is blocked or managed
    # elsewhere (None: its engine cannot be rendered): what the factory revision hashes.
    revision: str | None = None


@dataclass(frozen=True)
class GatesRequest:
    """A step whose gates are due: the step, and per canary pool (name, canary revision,
    stable revision)."""

    step: RolloutStep
    pools: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class RolloutPlan:
    """What the rollout adds to a plan."""

    status: RolloutStatus | None = None
    keep: frozenset[tuple[str, str]] = frozenset()  # (kind, name) held, never deleted
    events: tuple[tuple[str, str, str], ...] = ()
    condition: Condition | None = None
    gates: GatesRequest | None = None


def _parse(stamp: str) -> datetime:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return datetime.now(UTC).replace(microsecond=0)


def _rolled(info: DeploymentInfo | None) -> bool:
    return (
        info is not None
        and info.observed_generation >= info.generation
        and info.updated_replicas >= info.spec_replicas
        and info.ready_replicas >= info.spec_replicas
    )


def _view(outcome: PoolOutcome, observed: Observed) -> PoolView:
    status = outcome.status
    stable = observed.deployments.get(status.name)
    canary = observed.canaries.get(status.name)
    return PoolView(
        name=status.name,
        region=status.region,
        target=status.revision,
        stable=stable.revision if stable else None,
        stable_desired=status.desired_replicas,
        stable_ready=stable.ready_replicas if stable else 0,
        stable_rolled=_rolled(stable),
        canary=canary.revision if canary else None,
        canary_ready=canary.ready_replicas if canary else 0,
    )


def _ignored(outcome: PoolOutcome) -> PoolView:
    """A pool not deployed here (blocked, managed elsewhere): in the waves, never rolled."""
    status = outcome.status
    return PoolView(status.name, status.region, None, None, 0, 0, False, None, 0)


def _held(status: PoolStatus, stable: DeploymentInfo) -> PoolStatus:
    """A pool whose stable Deployment the rollout holds: what it really runs."""
    state = status.state
    if state != "Degraded":
        current = stable.observed_generation >= stable.generation
        serving = current and stable.ready_replicas >= stable.spec_replicas
        state = "Running" if serving else "Progressing"
    return status.model_copy(
        update={
            "state": state,
            "revision": stable.revision,
            "desired_replicas": stable.spec_replicas,
            "ready_replicas": stable.ready_replicas,
        }
    )


def _rolled_back(factory: InferenceFactory, decision: RolloutDecision, now: str) -> Condition:
    previous = factory.status.conditions if factory.status else []
    generation = factory.metadata.generation
    status = decision.status
    if status.phase == "RolledBack":
        return condition(
            "RolledBack",
            "True",
            decision.failed_check or "GateFailed",
            status.message,
            generation=generation,
            now=now,
            previous=previous,
        )
    return condition(
        "RolledBack",
        "False",
        "NotRolledBack",
        "",
        generation=generation,
        now=now,
        previous=previous,
    )


def plan_rollout(
    factory: InferenceFactory,
    outcomes: list[PoolOutcome],
    observed: Observed,
    gates: GateReport | None = None,
) -> RolloutPlan:
    """Run the state machine over the pools deployed here and apply its directives to their
    outcomes (in place): held stables, canary Deployments, ``status.pools[].canary``."""

    def here(o: PoolOutcome) -> bool:
        return o.ctx is not None and bool(o.status.revision)

    deployed = [o for o in outcomes if here(o)]
    if not deployed:
        return RolloutPlan()
    # Over every pool, not only those deployed here: a pool blocked by its region (deleted
    # FleetRegion, narrowed residency) neither makes a new revision (a rolled-back one would
    # be tried again, one in progress restarted) nor moves the waves.
    revision = factory_revision(
        {o.status.name: o.revision or o.status.revision or "" for o in outcomes}
    )
    previous = factory.status.rollout if factory.status else None
    views = [_view(o, observed) if here(o) else _ignored(o) for o in outcomes]
    decision = next_rollout(
        factory.spec.rollout,
        revision,
        views,
        previous,
        gates,
        _parse(observed.now),
    )
    keep: set[tuple[str, str]] = set()
    due: list[tuple[str, str, str]] = []
    for outcome in deployed:
        directive = decision.pools.get(outcome.status.name)
        if directive is None or outcome.ctx is None:
            continue
        name = outcome.status.name
        stable = observed.deployments.get(name)
        target = outcome.status.revision or ""
        if directive.stable == "hold" and stable is not None:
            outcome.children = [c for c in outcome.children if c["kind"] != "Deployment"]
            keep.add(("Deployment", stable.name))
            outcome.status = _held(outcome.status, stable)
        if directive.canary_replicas > 0:
            outcome.children.append(canary_deployment(outcome.ctx, directive.canary_replicas))
            running = observed.canaries.get(name)
            ready = running.ready_replicas if running and running.revision == target else 0
            canary = PoolCanaryStatus(
                revision=target,
                weight=directive.canary_weight,
                desired_replicas=directive.canary_replicas,
                ready_replicas=ready,
            )
            outcome.status = outcome.status.model_copy(update={"canary": canary})
            if decision.gates_due and stable is not None and stable.revision:
                due.append((name, target, stable.revision))
    request = None
    if decision.gates_due and due and factory.spec.rollout is not None:
        steps = factory.spec.rollout.step_list()
        request = GatesRequest(steps[min(decision.status.step, len(steps) - 1)], tuple(due))
    cond = _rolled_back(factory, decision, observed.now) if factory.spec.rollout else None
    return RolloutPlan(
        status=decision.status,
        keep=frozenset(keep),
        events=decision.events,
        condition=cond,
        gates=request,
    )
