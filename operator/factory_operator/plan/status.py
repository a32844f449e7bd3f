"""Conditions with stable transition times, and the Ready/Progressing/Degraded summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from factory_operator.api import Condition, PoolStatus

# Most specific first: the first reason present among the pools names the condition.
BLOCKING_REASONS = (
    "InvalidSpec",
    "NoDefaultImage",
    "ResidencyViolation",
    "UnknownRegion",
    "AcceleratorTypeAmbiguous",
)
DEGRADING_REASONS = ("PodsRejected", "InsufficientAccelerators", "VolumeNotShared")
Status = Literal["True", "False", "Unknown"]


def condition(
    type_: str,
    status: Status,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: str,
    previous: Sequence[Condition],
) -> Condition:
    """A condition whose lastTransitionTime only moves when its status changes."""
    before = next((c for c in previous if c.type == type_), None)
    since = before.last_transition_time if before and before.status == status else now
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:4096],
        last_transition_time=since,
        observed_generation=generation,
    )


def _first(pools: Sequence[PoolStatus], reasons: Sequence[str]) -> str | None:
    present = {p.reason for p in pools}
    return next((r for r in reasons if r in present), None)


def _describe(pools: Sequence[PoolStatus], reason: str, messages: dict[str, str]) -> str:
    return "; ".join(
        f"pool {p.name}: {messages.get(p.name, reason)}" for p in pools if p.reason == reason
    )


def summarize(
    pools: Sequence[PoolStatus],
    messages: dict[str, str],
    *,
    generation: int | None,
    now: str,
    previous: Sequence[Condition],
) -> list[Condition]:
    """Ready, Progressing and Degraded from the per-pool states."""
    local = [p for p in pools if p.state != "ManagedElsewhere"]
    blocking = _first(local, BLOCKING_REASONS)
    degrading = _first(local, DEGRADING_REASONS)
    rolling = [p for p in local if p.state == "Progressing"]

    def make(type_: str, status: Status, reason: str, message: str) -> Condition:
        return condition(
            type_, status, reason, message, generation=generation, now=now, previous=previous
        )

    if blocking:
        ready = make("Ready", "False", blocking, _describe(local, blocking, messages))
    elif degrading:
        ready = make("Ready", "False", degrading, _describe(local, degrading, messages))
    elif rolling:
        ready = make(
            "Ready",
            "False",
            "PoolsNotReady",
            "; ".join(
                f"pool {p.name}: {p.ready_replicas}/{p.desired_replicas} ready" for p in rolling
            ),
        )
    elif not local:
        ready = make(
            "Ready",
            "False",
            "ManagedElsewhere",
            "no pool of this factory runs in this operator's region",
        )
    else:
        ready = make("Ready", "True", "AllPoolsReady", f"{len(local)} pool(s) ready")

    progressing = (
        make("Progressing", "True", "RollingOut", ", ".join(p.name for p in rolling))
        if rolling
        else make("Progressing", "False", "Stable", "")
    )
    worst = degrading or blocking
    degraded = (
        make("Degraded", "True", worst, _describe(local, worst, messages))
        if worst
        else make("Degraded", "False", "AsExpected", "")
    )
    return [ready, progressing, degraded]
