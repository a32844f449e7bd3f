"""The reconcile every handler calls: observe -> plan -> execute, with errors classified.

The autoscaler's timer calls it with ``decide=True`` (reads the load, decides); every other
handler keeps the counts of the last decision (see ``k8s.autoscaler``)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import kopf

from factory_operator.api import InferenceFactory
from factory_operator.api.errors import SpecError, TransientError
from factory_operator.k8s import (
    Kube,
    LoadReader,
    OperatorMetrics,
    Watched,
    World,
    execute,
    observe,
    plan_scaling,
    read_factory,
)
from factory_operator.k8s.cache import TOP_LEVEL
from factory_operator.plan import OperatorSettings, Plan, plan_factory
from factory_operator.plan.rollout import GateReport
from factory_operator.plan.rollout_plan import GatesRequest
from factory_operator.plan.scaling import AutoscalePlan

log = logging.getLogger(__name__)
RETRY_DELAY = 10.0
# The rollout timer's judge: a due step's gates (golden prompts, SLOs) -> their report.
Judge = Callable[[InferenceFactory, GatesRequest], Awaitable[GateReport]]


def utc_now() -> str:
    """Current time, RFC 3339, second precision (as Kubernetes stores it)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_autoscaling(
    metrics: OperatorMetrics, factory: InferenceFactory, plan: Plan, scaling: AutoscalePlan | None
) -> None:
    """The autoscaler's gauges (desired count per pool, missing capacity per jurisdiction)
    and, for a decision, a log line and a scale event per changed count."""
    ns, name = factory.metadata.namespace or "", factory.metadata.name
    if scaling is None:
        metrics.set_autoscaling(ns, name, {}, {})
        return
    mode = "external" if scaling.external else "operator"
    desired: dict[tuple[str, str, str, str], int] = {}
    for pool in plan.status.pools:
        scale = scaling.pools.get(pool.name)
        if scale is not None:
            desired[(pool.name, pool.region, pool.jurisdiction or "", mode)] = scale.desired
    jurisdictions = {p.jurisdiction for p in plan.status.pools if p.name in scaling.pools}
    missing: dict[str, tuple[float, int]] = {j: (0.0, 0) for j in jurisdictions if j}
    missing.update({p.jurisdiction: (p.missing_requests, p.missing_replicas)
                    for p in scaling.pressure})  # fmt: skip
    # A reconcile that did not decide keeps the pressure the last decision exported.
    metrics.set_autoscaling(ns, name, desired, None if scaling.held else missing)
    for pool_name, scale in scaling.pools.items():
        if scale.direction is not None:
            metrics.scale_events.labels(ns, name, pool_name, scale.direction).inc()
    # The same words as the Events: each changed count, and a jurisdiction coming under
    # CapacityPressure (once, when it begins).
    for event in scaling.events:
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        context = {"factory": name, "namespace": ns, "reason": event.reason, "mode": mode}
        log.log(level, "autoscaler: %s", event.message, extra=context)


def parse_factory(body: Any) -> InferenceFactory:
    """A kopf body as the model; a body the model refuses can never work."""
    raw = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in body}
    try:
        return InferenceFactory.model_validate(raw)
    except ValueError as err:
        raise SpecError(f"spec refused by the operator: {err}") from err


def record_metrics(metrics: OperatorMetrics, factory: InferenceFactory, plan: Plan) -> None:
    """Condition and replica gauges for one factory."""
    ns, name = factory.metadata.namespace or "", factory.metadata.name
    for cond in plan.status.conditions:
        metrics.set_condition(ns, name, cond.type, cond.status, cond.reason)
    for pool in plan.status.pools:
        labels = (ns, name, pool.name, pool.region, pool.jurisdiction or "")
        metrics.replicas.labels(*labels, "desired").set(pool.desired_replicas)
        metrics.replicas.labels(*labels, "ready").set(pool.ready_replicas)
    rollout = plan.status.rollout
    entered = 0.0
    if rollout is not None and rollout.phase != "Stable" and rollout.step_entered_at:
        with contextlib.suppress(ValueError):
            entered = datetime.fromisoformat(rollout.step_entered_at).timestamp()
    weights = {p.name: p.canary.weight for p in plan.status.pools if p.canary is not None}
    metrics.set_rollout(ns, name, rollout.phase if rollout else None, entered, weights)
    for event in plan.events:
        if event.reason == "RolledBack":
            failed = next((c for c in plan.status.conditions if c.type == "RolledBack"), None)
            metrics.rollbacks.labels(ns, name, failed.reason if failed else "GateFailed").inc()


async def _snapshot(
    kube: Kube, body: Any, settings: OperatorSettings, watched: Watched | None
) -> tuple[InferenceFactory, World, datetime] | None:
    """The factory as stored now and the world around it; None when it is gone or going.

    Not from kopf's body alone: the body can predate our own last status patch, and
    conditions planned from it would flap (read_factory; with the watches, the newer of the
    body and that patch's answer)."""
    meta = body["metadata"]
    namespace = meta.get("namespace") or "default"
    if watched is not None:
        seen = {k: body[k] for k in TOP_LEVEL if k in body}
        live = watched.own.fresher("InferenceFactory", namespace, meta["name"], seen)
    else:
        live = await read_factory(kube, namespace, meta["name"])
    if live is None:
        return None  # deleted since kopf saw it
    factory = parse_factory(live)
    if factory.metadata.deletion_timestamp:
        return None  # garbage collection removes owned children
    now = datetime.now(UTC).replace(microsecond=0)
    world = await observe(kube, factory, settings, now.strftime("%Y-%m-%dT%H:%M:%SZ"), watched)
    return factory, world, now


async def reconcile_factory(
    kube: Kube,
    body: Any,
    settings: OperatorSettings,
    metrics: OperatorMetrics,
    loads: LoadReader | None = None,
    *,
    decide: bool = False,
    watched: Watched | None = None,
    judge: Judge | None = None,
) -> Plan:
    """Bring one factory's children and status in line with its spec and the fleet.

    ``decide``: the autoscaler's decision (reads the load from ``loads``; without one, pools
    are held at replicas.min). ``watched``: the operator's watches, read instead of the API
    server (``k8s.cache``); without it everything is read fresh. ``judge``: the rollout
    timer's (a step whose gates are due is judged, then planned again with the report).
    Raises kopf.PermanentError
    for a spec that can never work (after writing the status that says why) and
    kopf.TemporaryError for transient API failures.
    """
    started = time.monotonic()
    try:
        snapshot = await _snapshot(kube, body, settings, watched)
        if snapshot is None:
            return Plan()
        factory, world, now = snapshot
        scaling = await plan_scaling(factory, world, settings, loads, decide=decide, now=now)
        plan = plan_factory(factory, world.regions, world.observed, settings, scaling)
        if judge is not None and plan.gates is not None:
            report = await judge(factory, plan.gates)
            # A judgement takes seconds (golden prompts, Prometheus): plan it against the
            # factory and the cluster as they are now; a report that no longer applies (a
            # new revision, a pause) is ignored by the state machine.
            snapshot = await _snapshot(kube, body, settings, watched)
            if snapshot is None:
                return Plan()
            factory, world, now = snapshot
            scaling = await plan_scaling(factory, world, settings, loads, decide=False, now=now)
            plan = plan_factory(
                factory, world.regions, world.observed, settings, scaling, gates=report
            )
        own = watched.own if watched else None
        writes = await execute(kube, factory, plan, world, settings, own=own)
        record_metrics(metrics, factory, plan)
        record_autoscaling(metrics, factory, plan, scaling)
    except SpecError as err:
        metrics.reconciles.labels(outcome="permanent").inc()
        raise kopf.PermanentError(str(err)) from err
    except TransientError as err:
        metrics.reconciles.labels(outcome="retry").inc()
        raise kopf.TemporaryError(str(err), delay=RETRY_DELAY) from err
    finally:
        metrics.reconcile_seconds.observe(time.monotonic() - started)
    metrics.reconciles.labels(outcome="ok").inc()
    if writes:
        log.info("reconciled", extra={"factory": factory.metadata.name, "writes": writes})
    if plan.permanent_error:
        raise kopf.PermanentError(plan.permanent_error)
    return plan
