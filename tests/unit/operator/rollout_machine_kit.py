"""Builders for the rollout state machine's tests (test_rollout_machine*.py): pool views,
specs, gate results, and one call of ``plan.rollout.next_rollout`` at a time on a clock that
starts at ``T0``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from factory_operator.api.rollout import GateResult, Rollout, RolloutStatus
from factory_operator.plan.rollout import (
    GateReport,
    PoolDirective,
    PoolView,
    RolloutDecision,
    next_rollout,
)

EU, US, AP = "eu-west-1", "us-east-1", "ap-south-1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
STABLE_R1 = RolloutStatus(revision="r1", stable_revision="r1", phase="Stable")
HOLD = PoolDirective("hold", 0, 0)
TARGET = PoolDirective("target", 0, 0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def view(
    name: str = "a",
    region: str = EU,
    *,
    target: str | None = "p2",
    stable: str | None = "p1",
    desired: int = 4,
    rolled: bool = True,
    canary: str | None = None,
    ready: int = 0,
) -> PoolView:
    return PoolView(
        name=name,
        region=region,
        target=target,
        stable=stable,
        stable_desired=desired,
        stable_ready=desired if rolled else 0,
        stable_rolled=rolled,
        canary=canary,
        canary_ready=ready,
    )


def spec(**fields: Any) -> Rollout:
    return Rollout.model_validate(fields)


CANARY = spec()


def decide(
    pools: list[PoolView],
    previous: RolloutStatus | None = None,
    *,
    now: float = 0,
    gates: GateReport | None = None,
    rollout: Rollout | None = CANARY,
    revision: str = "r2",
) -> RolloutDecision:
    return next_rollout(rollout, revision, pools, previous, gates, at(now))


def result(check: str, pool: str = "a", passed: bool | None = True, **figures: Any) -> GateResult:
    return GateResult(check=check, pool=pool, passed=passed, **figures)


PASS = GateReport((result("ErrorRatio", value=0.001, baseline=0.002, threshold=0.01),))


def reasons(decision: RolloutDecision) -> list[str]:
    return [reason for _, reason, _ in decision.events]


# Pools of two waves (default: eu alone, then us), both changed: a canary in each.
OLD = [view("a"), view("b", US)]
A_READY = [view("a", canary="p2", ready=1), view("b", US)]  # step 0: 1 replica of 4 (10%)


def started() -> RolloutDecision:
    """Wave 1 step 1: started at 0, canary ready at 10 (gates due at 70)."""
    first = decide(OLD, STABLE_R1, now=0)
    return decide(A_READY, first.status, now=10)


def last_step_passed(pools: list[PoolView]) -> RolloutDecision:
    """Wave 1's last step judged and passed at 140 (its canary grown to 2 at 80): promoting."""
    running = started()
    step2 = decide(A_READY, running.status, now=70, gates=PASS)
    bigger = [replace(pools[0], canary="p2", canary_ready=2), *pools[1:]]
    ready = decide(bigger, step2.status, now=80)
    return decide(bigger, ready.status, now=140, gates=PASS)


def rollback_at_step_one() -> RolloutDecision:
    """Wave 1 step 1 rolled back at 70 by a failed TtftP95 gate."""
    running = started()
    bad = GateReport((result("TtftP95", passed=False, value=0.9, baseline=0.4, threshold=1.5),))
    return decide(A_READY, running.status, now=70, gates=bad)
