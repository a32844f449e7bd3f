"""The rollout state machine (pure): where a factory's rollout goes next.

``next_rollout`` takes ``spec.rollout``, the factory revision, what runs in each pool
(``PoolView``), the previous ``status.rollout``, the gates' report when a step was judged, and
``now``; it returns the next status, what each pool's stable and canary Deployments should be,
the events, whether the step's gates are due, and the failed check of a rollback. Every
reconcile calls it without a report; the timer calls it with one when ``gates_due``. All the
state is in ``status.rollout`` (restart-safe: a step advances in the status write that records
it; the step index only ever comes from the previous status). docs/rollouts.md has the design.

Decisions the design notes leave open, taken as an Argo Rollouts / Flagger user expects:

- A pool needs a canary when its stable Deployment exists and runs another revision than the
  spec's. Every other pool (new pool, unchanged pool) is applied at its target in every phase.
- A pool's wave is its region's (``waves``: regions that ``spec.waves`` omits form a last
  wave). Waves are computed over every pool, blocked ones included, so that the wave indices
  do not move when a pool is blocked. A rollout starts at the first wave with a canary.
- The canaries' weight is the step's once every canary of the wave was ready
  (``stepStartedAt`` set) and stays so if a canary pod drops later (the gates judge that);
  0 while the step's canaries start, also between steps when a step adds replicas. The
  readiness deadline (``CanaryReady``) only runs while the step has not started.
- Inconclusive gates roll back (``Deadline``) ``progressDeadlineSeconds`` after the gates were
  due (``stepStartedAt + pauseSeconds``): a step whose pause is longer than the deadline is
  still judged. A step that passed is followed in the same call (its canaries, if already
  ready, start at once); ``RolloutStepPassed`` is sent for the last step too.
- A wave is promoted when every pool of it runs the target, rolled; the last wave (and a
  manual promotion) when every pool does. Promoting has no deadline: the stable Deployments'
  own ``progressDeadlineSeconds`` and the InferenceFactoryRolloutStuck alert cover it.
- A rollback stops the rollout where it is: waves already promoted keep the new revision (the
  operator only renders the spec's revision); reverting the spec to the stable revision rolls
  them back (phase Stable, every pool at its target).
- ``paused`` applies while Progressing (a rollout started paused starts, canaries without
  traffic, then pauses); ignored while Promoting (the stables already roll). Deadlines do not
  run while paused: resuming restarts ``stepEnteredAt`` and, if set, ``stepStartedAt``.
- ``promote`` works in Progressing, Paused, Promoting, RolledBack, and at the start of a
  rollout of that revision (a promote left in the spec applies again if the spec returns to
  that revision: clear it after use); it wins over ``paused`` and clears ``failedRevision``.
  Canaries are kept at their weight until the stables are rolled (removed at once if 0).
- Events beyond the notes: ``RolloutWavePromoted``, and ``RolloutAbandoned`` (Normal) when the
  spec leaves a rollout in progress for the stable revision or for one with nothing to canary
  (``RolloutStarted`` names the rollout it replaces).
- ``status.gates``: cleared when the revision changes; a judgement's results sorted failed,
  inconclusive, passed (the cap keeps what matters). ``CanaryReady`` and ``Deadline`` rollbacks
  record one failed result per pool, so ``failed_check`` (the first failed result) is read
  from the status and stays the same on every later call.
- Rolling (or no ``spec.rollout``) clears ``failedRevision``. Wave and step indices that no
  longer exist (``waves``/``steps`` are not part of the revision) are clamped; a missing or
  unparsable ``stepEnteredAt`` of a step in progress restarts at ``now``, and a stamp
  ahead of ``now`` (clock skew) counts as ``now``; times are to the second.
- Message and summary are derived from the resulting status and the pools only, so a call fed
  its own status returns the same status (idempotence). With no canary rollout running the
  summary is the phase alone ("Stable", "Progressing"), as RolloutStatus.summary says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from factory_operator.api.rollout import GateResult, Rollout, RolloutStatus, RolloutStep

from .rollout_waves import (
    PoolView,
    RolloutContext,
    RolloutState,
    by_verdict,
    canary_replicas,
    describe_all,
    factory_revision,
    format_time,
    is_settled,
    needs_canary,
    parse_time,
    status_of,
    utc_seconds,
    wave_label,
    waves,
    weight_of,
)

__all__ = [
    "GateReport",
    "PoolDirective",
    "PoolView",
    "RolloutDecision",
    "canary_replicas",
    "factory_revision",
    "next_rollout",
    "waves",
]

Event = tuple[str, str, str]
_ACTIVE = ("Progressing", "Paused", "Promoting")


@dataclass(frozen=True)
class GateReport:
    """The gates' results for the step in progress."""

    results: tuple[GateResult, ...]

    @property
    def passed(self) -> bool | None:
        """False if any result failed, None if any is inconclusive, else True."""
        if any(r.passed is False for r in self.results):
            return False
        if any(r.passed is None for r in self.results):
            return None
        return True


@dataclass(frozen=True)
class PoolDirective:
    """What the pool's Deployments should be."""

    stable: Literal["target", "hold"]  # apply the stable at the target, or leave it as it runs
    canary_replicas: int  # 0: no canary Deployment (an existing one is deleted)
    canary_weight: int  # router weight 0..100 (status.pools[].canary.weight)


@dataclass(frozen=True)
class RolloutDecision:
    """The machine's answer: the next status, per pool what to run, what to tell."""

    status: RolloutStatus
    pools: dict[str, PoolDirective]  # every pool with a target
    events: tuple[Event, ...]
    gates_due: bool
    failed_check: str | None  # when phase is RolledBack


def next_rollout(  # noqa: PLR0917 (the interface the planner calls, positional)
    rollout: Rollout | None,
    revision: str,
    pools: Sequence[PoolView],
    previous: RolloutStatus | None,
    gates: GateReport | None,
    now: datetime,
) -> RolloutDecision:
    """The next state of the factory's rollout (see the module's docstring)."""
    now = utc_seconds(now)
    targeted = tuple(p for p in pools if p.target is not None)
    if rollout is None or rollout.strategy == "Rolling":
        return _rolling(revision, targeted, previous)
    plan = waves(rollout, [p.region for p in pools])
    region_wave: dict[str, int] = {}
    for index, regions in enumerate(plan):
        for region in regions:
            region_wave.setdefault(region, index)
    ctx = RolloutContext(
        rollout=rollout,
        revision=revision,
        pools=targeted,
        waves=plan,
        wave_of={p.name: region_wave[p.region] for p in targeted},
        steps=rollout.step_list(),
        now=now,
    )
    events: list[Event] = []
    state = _transition(ctx, previous, gates, events)
    failed = None
    if state.phase == "RolledBack":
        failed = next((r.check for r in state.gates if r.passed is False), "RolledBack")
    return RolloutDecision(
        status=status_of(ctx, state),
        pools=_directives(ctx, state),
        events=tuple(events),
        gates_due=_gates_due(ctx, state),
        failed_check=failed,
    )


def _rolling(
    revision: str, pools: tuple[PoolView, ...], previous: RolloutStatus | None
) -> RolloutDecision:
    settled = all(is_settled(p) for p in pools)
    rolled = sum(is_settled(p) for p in pools)
    before = previous.stable_revision if previous else None
    status = RolloutStatus(
        revision=revision,
        stable_revision=revision if settled else before,
        phase="Stable" if settled else "Progressing",
        message=f"revision {revision} is stable"
        if settled
        else f"rolling out revision {revision} ({rolled}/{len(pools)} pools rolled)",
        summary="Stable" if settled else "Progressing",
    )
    directives = {p.name: PoolDirective("target", 0, 0) for p in pools}
    return RolloutDecision(status, directives, (), gates_due=False, failed_check=None)


def _transition(
    ctx: RolloutContext, prev: RolloutStatus | None, gates: GateReport | None, events: list[Event]
) -> RolloutState:
    same = prev is not None and prev.revision == ctx.revision
    abandoning = (
        prev is not None and not same and prev.phase in _ACTIVE and prev.started_at is not None
    )
    if prev is not None and ctx.revision == prev.stable_revision:
        if abandoning:
            events.append(_abandoned(prev, f"the spec is back at the stable {ctx.revision}"))
        return _stable(ctx, prev if same else None)
    if prev is not None and same:
        if prev.phase == "RolledBack" and not ctx.manual:
            return _restore(ctx, prev)
        if prev.phase != "Stable" and prev.started_at is not None and ctx.waves:
            return _carry_on(ctx, _restore(ctx, prev), gates, events)
    if not any(needs_canary(p) for p in ctx.pools):
        if prev is not None and abandoning:
            events.append(_abandoned(prev, f"{ctx.revision} has nothing to canary"))
        if all(is_settled(p) for p in ctx.pools):
            return _stable(ctx, prev if same else None)
        return RolloutState(
            phase="Progressing",
            stable_revision=prev.stable_revision if prev else None,
            gates=tuple(prev.gates) if prev is not None and same else (),
        )
    return _start(ctx, prev, events, abandoning)


def _abandoned(prev: RolloutStatus, why: str) -> Event:
    return ("Normal", "RolloutAbandoned", f"rollout of revision {prev.revision} abandoned: {why}")


def _stable(ctx: RolloutContext, same: RolloutStatus | None) -> RolloutState:
    """Phase Stable at the spec's revision (``same``: the previous status of that revision)."""
    return RolloutState(
        phase="Stable",
        stable_revision=ctx.revision,
        started_at=same.started_at if same else None,
        gates=tuple(same.gates) if same else (),
    )


def _restore(ctx: RolloutContext, prev: RolloutStatus) -> RolloutState:
    return RolloutState(
        phase=prev.phase,
        stable_revision=prev.stable_revision,
        failed_revision=prev.failed_revision,
        wave=max(0, min(prev.wave, ctx.last)),
        step=min(prev.step, len(ctx.steps) - 1),
        entered=_not_after(parse_time(prev.step_entered_at), ctx.now),
        started=_not_after(parse_time(prev.step_started_at), ctx.now),
        started_at=prev.started_at,
        gates=tuple(prev.gates),
    )


def _not_after(moment: datetime | None, now: datetime) -> datetime | None:
    """A stamp ahead of this clock (skew, a hand edit) counts from now: never a step that
    waits, unjudged and without deadline, for the clock to catch up."""
    return None if moment is None else min(moment, now)


def _start(
    ctx: RolloutContext, prev: RolloutStatus | None, events: list[Event], abandoning: bool
) -> RolloutState:
    first = next(i for i in range(len(ctx.waves)) if ctx.canaries(i))
    state = RolloutState(
        phase="Progressing",
        stable_revision=prev.stable_revision if prev else None,
        wave=first,
        entered=ctx.now,
        started_at=format_time(ctx.now),
    )
    weights = ", ".join(f"{s.weight}%" for s in ctx.steps)
    message = (
        f"rollout of revision {ctx.revision} started (stable: {state.stable_revision}): "
        f"{len(ctx.waves)} wave(s), steps {weights}; starts at {wave_label(ctx, state)}"
    )
    if prev is not None and abandoning:
        message += f"; replaces the rollout of {prev.revision}"
    events.append(("Normal", "RolloutStarted", message))
    return _carry_on(ctx, state, None, events)


def _carry_on(
    ctx: RolloutContext, state: RolloutState, gates: GateReport | None, events: list[Event]
) -> RolloutState:
    """Promote, pause or resume as the spec says, then advance."""
    if ctx.manual:
        state = replace(state, phase="Promoting", wave=ctx.last, failed_revision=None)
        return _advance(ctx, state, None, events)
    if state.phase == "Progressing" and ctx.rollout.paused:
        events.append(("Normal", "RolloutPaused", f"rollout paused at {wave_label(ctx, state)}"))
        return replace(state, phase="Paused")
    if state.phase == "Paused":
        if ctx.rollout.paused:
            return state
        events.append(("Normal", "RolloutResumed", f"rollout resumed at {wave_label(ctx, state)}"))
        restarted = ctx.now if state.started else None
        state = replace(state, phase="Progressing", entered=ctx.now, started=restarted)
    if state.phase == "RolledBack":
        return state
    return _advance(ctx, state, gates, events)


def _advance(
    ctx: RolloutContext, state: RolloutState, gates: GateReport | None, events: list[Event]
) -> RolloutState:
    """As far as the observed state and the report allow: at most one judgement, waves and
    steps that need no wait passed at once."""
    now = ctx.now
    while True:
        if state.phase == "Promoting":
            pools = ctx.pools if state.wave >= ctx.last else ctx.wave_pools(state.wave)
            if not all(is_settled(p) for p in pools):
                return state
            if state.wave >= ctx.last:
                how = "manually (spec.rollout.promote)" if ctx.manual else "every wave passed"
                events.append(
                    ("Normal", "RolloutPromoted", f"revision {ctx.revision} promoted: {how}")
                )
                return RolloutState(
                    phase="Stable",
                    stable_revision=ctx.revision,
                    started_at=state.started_at,
                    gates=state.gates,
                )
            events.append(
                (
                    "Normal",
                    "RolloutWavePromoted",
                    f"{wave_label(ctx, state)} promoted to {ctx.revision}",
                )
            )
            state = replace(state, phase="Progressing", wave=state.wave + 1, step=0)
            state = replace(state, entered=now, started=None)
            continue
        if state.phase != "Progressing":
            return state
        canaries = ctx.canaries(state.wave)
        if not canaries:  # nothing to canary in this wave: passed through
            if state.wave >= ctx.last:
                state = replace(state, phase="Promoting")
            else:
                state = replace(state, wave=state.wave + 1, step=0, entered=now, started=None)
            continue
        step = ctx.steps[state.step]
        if state.entered is None:
            state = replace(state, entered=now)
        if state.started is None and all(_canary_ready(p, step) for p in canaries):
            state = replace(state, started=now)
        if state.started is None:
            if state.entered is not None and now - state.entered > ctx.deadline:
                return _rollback(ctx, state, _not_ready(ctx, state, canaries), events)
            return state
        if gates is None or not _gates_due(ctx, state):
            return state
        report, gates = gates, None  # one judgement per call
        verdict = report.passed
        if verdict is False:
            return _rollback(ctx, state, report.results, events)
        if verdict is None:
            due = state.started + timedelta(seconds=step.pause_seconds)
            if now - due > ctx.deadline:
                late = _inconclusive(ctx, report.results)
                return _rollback(ctx, state, late + report.results, events)
            return replace(state, gates=by_verdict(report.results))
        events.append(
            (
                "Normal",
                "RolloutStepPassed",
                f"{wave_label(ctx, state)} step {state.step + 1}/{len(ctx.steps)} "
                f"(weight {step.weight}) passed: {describe_all(report.results, 900)}",
            )
        )
        state = replace(state, gates=by_verdict(report.results))
        if state.step + 1 < len(ctx.steps):
            state = replace(state, step=state.step + 1, entered=now, started=None)
        else:
            state = replace(state, phase="Promoting")


def _canary_ready(p: PoolView, step: RolloutStep) -> bool:
    return p.canary == p.target and p.canary_ready >= canary_replicas(step, p.stable_desired)


def _gates_due(ctx: RolloutContext, state: RolloutState) -> bool:
    if state.phase != "Progressing" or state.started is None:
        return False
    return ctx.now >= state.started + timedelta(seconds=ctx.steps[state.step].pause_seconds)


def _not_ready(
    ctx: RolloutContext, state: RolloutState, canaries: list[PoolView]
) -> tuple[GateResult, ...]:
    step = ctx.steps[state.step]
    results = []
    for p in canaries:
        if _canary_ready(p, step):
            continue
        desired = canary_replicas(step, p.stable_desired)
        ready = p.canary_ready if p.canary == p.target else 0
        runs = "" if p.canary in (p.target, None) else f" (the canary runs {p.canary})"
        results.append(
            GateResult(
                check="CanaryReady",
                pool=p.name,
                passed=False,
                value=ready,
                threshold=desired,
                message=f"{ready}/{desired} canary replicas ready at {p.target} after "
                f"{ctx.rollout.progress_deadline_seconds} s{runs}",
            )
        )
    return tuple(results)


def _inconclusive(ctx: RolloutContext, results: tuple[GateResult, ...]) -> tuple[GateResult, ...]:
    pending: dict[str, list[str]] = {}
    for r in results:
        if r.passed is None:
            pending.setdefault(r.pool, []).append(r.message or r.check)
    return tuple(
        GateResult(
            check="Deadline",
            pool=pool,
            passed=False,
            threshold=ctx.rollout.progress_deadline_seconds,
            message=f"not judged {ctx.rollout.progress_deadline_seconds} s after the gates "
            f"were due: {'; '.join(what)}"[:1024],
        )
        for pool, what in pending.items()
    )


def _rollback(
    ctx: RolloutContext, state: RolloutState, results: tuple[GateResult, ...], events: list[Event]
) -> RolloutState:
    kept = by_verdict(results)
    failed = [r for r in kept if r.passed is False]
    where = f"{wave_label(ctx, state)} step {state.step + 1}/{len(ctx.steps)}"
    message = f"revision {ctx.revision} rolled back at {where}: {describe_all(failed, 900)}"
    events.append(("Warning", "RolledBack", message))
    return replace(
        state, phase="RolledBack", failed_revision=ctx.revision, started=None, gates=kept
    )


def _directives(ctx: RolloutContext, state: RolloutState) -> dict[str, PoolDirective]:
    weight, step = weight_of(ctx, state), ctx.steps[state.step]
    directives = {}
    for p in ctx.pools:
        wave, needs = ctx.wave_of[p.name], needs_canary(p)
        replicas = 0
        hold = False
        if state.phase == "RolledBack":
            hold = needs
        elif state.phase in ("Progressing", "Paused"):
            hold = needs and wave >= state.wave
            if hold and wave == state.wave:
                replicas = canary_replicas(step, p.stable_desired)
        elif state.phase == "Promoting":
            hold = needs and wave > state.wave
            kept = ctx.manual or wave == state.wave
            if kept and weight and p.canary == p.target:
                replicas = canary_replicas(step, p.stable_desired)
        directives[p.name] = PoolDirective(
            "hold" if hold else "target", replicas, weight if replicas else 0
        )
    return directives
