"""Pieces of the rollout state machine (``plan.rollout``): the factory revision, the waves, a
step's canary size, status timestamps, what the machine sees of a pool (``PoolView``), its
context and state, and the status it writes, in words. Pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from factory_operator.api.rollout import (
    MAX_GATE_RESULTS,
    GateResult,
    Rollout,
    RolloutPhase,
    RolloutStatus,
    RolloutStep,
)

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# A judgement's results in status.gates: failed first, then inconclusive, then passed, so the
# cap keeps what explains the verdict.
_VERDICT_ORDER = {False: 0, None: 1, True: 2}


def factory_revision(pool_revisions: Mapping[str, str]) -> str:
    """The factory's revision: sha256 of the sorted (pool, pool revision) pairs, 10 hex chars."""
    pairs = sorted(pool_revisions.items())
    text = json.dumps(pairs, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def waves(rollout: Rollout, pool_regions: Sequence[str]) -> list[list[str]]:
    """The regions wave by wave.

    ``spec.waves`` when given: a region named twice counts in its first wave only, empty waves
    are dropped, and the regions of pools it does not name form one last wave (every pool is
    rolled out exactly once, never left behind). Default: the first pool's region alone (the
    canary region), then the other distinct regions in spec order, ``waveSize`` at a time.
    """
    regions = list(dict.fromkeys(pool_regions))
    if not rollout.waves:
        if not regions:
            return []
        rest, size = regions[1:], rollout.wave_size
        return [regions[:1], *(rest[i : i + size] for i in range(0, len(rest), size))]
    seen: set[str] = set()
    result: list[list[str]] = []
    for wave in rollout.waves:
        kept = [r for r in dict.fromkeys(wave) if r not in seen]
        seen.update(kept)
        if kept:
            result.append(kept)
    missing = [r for r in regions if r not in seen]
    if missing:
        result.append(missing)
    return result


def canary_replicas(step: RolloutStep, stable_desired: int) -> int:
    """Canary replicas of a pool at a step: ``step.replicas``, else the stable's desired
    replicas x weight / 100 rounded up, at least 1."""
    if step.replicas is not None:
        return step.replicas
    return max(1, -(-max(stable_desired, 0) * step.weight // 100))


def utc_seconds(moment: datetime) -> datetime:
    """``moment`` in UTC to the second (a naive one is taken as UTC): what status can hold."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(microsecond=0)


def format_time(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC, as status stores it."""
    return None if moment is None else utc_seconds(moment).strftime(TIME_FORMAT)


def parse_time(text: str | None) -> datetime | None:
    """A status timestamp, leniently (offsets, fractions, no zone = UTC); unparsable: None."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return utc_seconds(parsed)


def by_verdict(results: Iterable[GateResult]) -> tuple[GateResult, ...]:
    """Results as status.gates keeps them: failed, inconclusive, passed (stable), capped."""
    ordered = sorted(results, key=lambda r: _VERDICT_ORDER[r.passed])
    return tuple(ordered[:MAX_GATE_RESULTS])


def _number(value: float) -> str:
    return f"{value:.4g}"


def describe(result: GateResult) -> str:
    """One gate result in words, with its figures: 'TtftP95 on a (value 0.9, stable 0.4,
    threshold 1.5): ...'."""
    figures = [
        f"{label} {_number(number)}"
        for label, number in (
            ("value", result.value),
            ("stable", result.baseline),
            ("threshold", result.threshold),
        )
        if number is not None
    ]
    text = f"{result.check} on {result.pool}"
    if figures:
        text += f" ({', '.join(figures)})"
    if result.message:
        text += f": {result.message}"
    return text


def describe_all(results: Iterable[GateResult], limit: int = 1024) -> str:
    """Results in words, '; '-separated, cut at ``limit`` characters (an event's message)."""
    text = "; ".join(describe(r) for r in results) or "no gates"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class PoolView:
    """What runs in one pool, as the machine needs it."""

    name: str
    region: str
    target: str | None  # the pool revision the spec asks for; None: blocked, ignored
    stable: str | None  # revision of the stable Deployment's template; None: no Deployment
    stable_desired: int
    stable_ready: int
    stable_rolled: bool  # rolled out at its template (generation observed, all updated+ready)
    canary: str | None  # revision of the observed canary Deployment
    canary_ready: int


def needs_canary(p: PoolView) -> bool:
    """Its stable Deployment runs another revision than the spec's: the change is canaried."""
    return p.stable is not None and p.stable != p.target


def is_settled(p: PoolView) -> bool:
    """Its stable Deployment runs the spec's revision, rolled out."""
    return p.stable == p.target and p.stable_rolled


@dataclass(frozen=True)
class RolloutContext:
    """What one call of the machine knows: the spec, the pools with a target, the waves."""

    rollout: Rollout
    revision: str
    pools: tuple[PoolView, ...]  # those with a target
    waves: list[list[str]]
    wave_of: dict[str, int]  # pool name -> wave index
    steps: list[RolloutStep]
    now: datetime

    @property
    def manual(self) -> bool:
        return self.rollout.promote == self.revision

    @property
    def deadline(self) -> timedelta:
        return timedelta(seconds=self.rollout.progress_deadline_seconds)

    @property
    def last(self) -> int:
        return len(self.waves) - 1

    def wave_pools(self, wave: int) -> list[PoolView]:
        return [p for p in self.pools if self.wave_of[p.name] == wave]

    def canaries(self, wave: int) -> list[PoolView]:
        return [p for p in self.wave_pools(wave) if needs_canary(p)]


@dataclass(frozen=True)
class RolloutState:
    """``status.rollout`` while the machine works on it (timestamps parsed)."""

    phase: RolloutPhase
    stable_revision: str | None
    failed_revision: str | None = None
    wave: int = 0
    step: int = 0
    entered: datetime | None = None
    started: datetime | None = None
    started_at: str | None = None  # when the rollout of the revision started, as stored
    gates: tuple[GateResult, ...] = ()


def weight_of(ctx: RolloutContext, state: RolloutState) -> int:
    """The canaries' weight: the step's once its canaries were all ready, else 0."""
    return ctx.steps[state.step].weight if state.started is not None else 0


def regions_of(ctx: RolloutContext, state: RolloutState) -> list[str]:
    """status.regions: those of the wave in progress (all of them for a manual promotion)."""
    if state.phase == "Stable" or state.started_at is None or not ctx.waves:
        return []
    if state.phase == "Promoting" and ctx.manual:
        return [r for wave in ctx.waves for r in wave][:16]
    return ctx.waves[state.wave][:16]


def wave_label(ctx: RolloutContext, state: RolloutState) -> str:
    """'wave 1/2 (eu-west-1)', for messages."""
    return f"wave {state.wave + 1}/{len(ctx.waves)} ({', '.join(regions_of(ctx, state))})"


def status_of(ctx: RolloutContext, state: RolloutState) -> RolloutStatus:
    """The status a state is written as; its words depend on nothing else."""
    summary, message = _words(ctx, state)
    return RolloutStatus(
        revision=ctx.revision,
        stable_revision=state.stable_revision,
        failed_revision=state.failed_revision,
        phase=state.phase,
        wave=state.wave,
        step=state.step,
        regions=regions_of(ctx, state),
        step_entered_at=format_time(state.entered),
        step_started_at=format_time(state.started),
        started_at=state.started_at,
        message=message[:4096],
        gates=list(state.gates),
        summary=summary[:256],
    )


def _words(ctx: RolloutContext, state: RolloutState) -> tuple[str, str]:
    """(summary, message) of a state: what kubectl shows, and what is happening."""
    rev, weight = ctx.revision, weight_of(ctx, state)
    rolled = sum(is_settled(p) for p in ctx.pools)
    steps = f"step {state.step + 1}/{len(ctx.steps)}"
    at = f"wave {state.wave + 1}/{len(ctx.waves)} {steps}"
    if state.phase == "Stable":
        still = len(ctx.pools) - rolled
        return "Stable", f"revision {rev} is stable" + (
            f"; {still} pool(s) still rolling to it" if still else ""
        )
    if state.phase == "Progressing" and state.started_at is None:
        return "Progressing", f"rolling out revision {rev} ({rolled}/{len(ctx.pools)} pools rolled)"
    if state.phase == "RolledBack":
        failed = [r for r in state.gates if r.passed is False]
        check = failed[0].check if failed else "RolledBack"
        return f"rolled back: {check}", (
            f"revision {rev} rolled back at {wave_label(ctx, state)} {steps}: "
            f"{describe_all(failed, 3000)}. Not tried again: change the spec, or set "
            f"spec.rollout.promote to {rev} to promote it anyway"
        )
    if state.phase == "Paused":
        return f"paused at {at}", (
            f"paused by spec.rollout.paused at {wave_label(ctx, state)} {steps} ({weight}% of "
            f"traffic on revision {rev}); set paused to false to resume"
        )
    if state.phase == "Promoting":
        if ctx.manual:
            return "promoting everywhere", (
                f"promoted by spec.rollout.promote: every pool rolls to revision {rev} "
                f"({rolled}/{len(ctx.pools)} rolled), remaining steps and gates skipped"
            )
        pools = ctx.pools if state.wave >= ctx.last else ctx.wave_pools(state.wave)
        done = sum(is_settled(p) for p in pools)
        return f"promoting wave {state.wave + 1}/{len(ctx.waves)}", (
            f"{wave_label(ctx, state)} promoted: its stable Deployments roll to revision {rev} "
            f"({done}/{len(pools)} rolled), canaries kept at {weight}% until then"
        )
    return _progress_words(ctx, state, at, weight)


def _progress_words(
    ctx: RolloutContext, state: RolloutState, at: str, weight: int
) -> tuple[str, str]:
    step = ctx.steps[state.step]
    where = f"{wave_label(ctx, state)} step {state.step + 1}/{len(ctx.steps)}"
    if state.started is None:
        counts = ", ".join(
            f"{p.name} {p.canary_ready if p.canary == p.target else 0}/"
            f"{canary_replicas(step, p.stable_desired)}"
            for p in ctx.canaries(state.wave)
        )
        limit = format_time(state.entered + ctx.deadline) if state.entered else "?"
        return f"{at} starting", (
            f"{where}: canaries of revision {ctx.revision} starting ({counts} ready); "
            f"rolled back if not ready by {limit}"
        )
    due = state.started + timedelta(seconds=step.pause_seconds)
    summary = f"{at} weight {weight}"
    if ctx.now < due:
        return summary, (
            f"{where}: {weight}% of traffic on revision {ctx.revision}; gates judged from "
            f"{format_time(due)}"
        )
    pending = [r for r in state.gates if r.passed is None]
    if pending:
        return summary, (
            f"{where}: gates inconclusive ({describe_all(pending, 2000)}); rolled back at "
            f"{format_time(due + ctx.deadline)} if still so"
        )
    return summary, f"{where}: {weight}% of traffic on revision {ctx.revision}; gates due"
