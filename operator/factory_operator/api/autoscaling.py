"""Autoscaling settings of an InferenceFactory (``spec.autoscaling``) and their defaults.

Every default lives in this module, once: ``POLICIES`` (one row per policy name) and
``EXPECTED_STARTUP_SECONDS`` (by accelerator kind). The CRD descriptions are generated from
the same tables, so ``kubectl explain`` cannot drift from what the autoscaler does. A field
set in the spec wins over its policy's value; ``EffectiveAutoscaling`` is the result, with
nothing left unset, and is what the pure decision function (``plan.autoscale``) reads.

The status side (``PoolAutoscalingStatus``) is the small immutable memory the autoscaler
keeps between decisions: the last change, when demand was last seen, and the recent
recommendations its stabilisation windows look back over.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal, TypeVar

from pydantic import ConfigDict, Field

from .accelerators import AcceleratorKind
from .common import CAMEL_CASE_REASON, RFC3339, ApiModel, cel, cel_rules

PolicyName = Literal["balanced", "aggressive", "conservative", "off"]
AutoscalingMode = Literal["operator", "external"]
Direction = Literal["Up", "Down"]
MAX_RECOMMENDATIONS = 32
_T = TypeVar("_T")


@dataclass(frozen=True)
class EffectiveAutoscaling:
    """Autoscaling settings of one pool with every default applied."""

    policy: PolicyName = "balanced"
    mode: AutoscalingMode = "operator"
    # Targets, per ready replica.
    batch_utilization: float = 0.8
    waiting_per_replica: float = 4.0
    kv_cache_usage: float = 0.8
    ttft_p95_ms: int | None = None
    # Scale-up: fast.
    up_stabilization_seconds: int = 0
    up_max_step_replicas: int = 4
    # Scale-down: slow.
    down_stabilization_seconds: int = 300
    down_cooldown_seconds: int = 120
    down_max_step_replicas: int = 1
    idle_seconds: int = 900
    expected_startup_seconds: int = 240


# The policy table. "off" keeps today's behaviour: the pool runs replicas.min.
POLICIES: Final[dict[PolicyName, EffectiveAutoscaling]] = {
    "balanced": EffectiveAutoscaling(),
    "aggressive": EffectiveAutoscaling(
        policy="aggressive",
        batch_utilization=0.7,
        waiting_per_replica=2.0,
        kv_cache_usage=0.7,
        up_max_step_replicas=8,
        down_stabilization_seconds=180,
        down_cooldown_seconds=60,
        down_max_step_replicas=2,
        idle_seconds=300,
    ),
    "conservative": EffectiveAutoscaling(
        policy="conservative",
        batch_utilization=0.9,
        waiting_per_replica=8.0,
        kv_cache_usage=0.9,
        up_stabilization_seconds=60,
        up_max_step_replicas=2,
        down_stabilization_seconds=900,
        down_cooldown_seconds=300,
        idle_seconds=3600,
    ),
    "off": EffectiveAutoscaling(policy="off"),
}
# Expected seconds from a scale-up to a Ready replica, the horizon over which demand growth is
# projected. Not pool.startupSeconds, which is the probe's ceiling: a model load usually takes
# a few minutes on NVIDIA (download from cache, load, CUDA graphs); Neuron compiles the model
# at start-up (minutes to a quarter of an hour for an 8B model without a compile cache).
EXPECTED_STARTUP_SECONDS: Final[dict[AcceleratorKind, int]] = {"nvidia": 240, "neuron": 900}
# Relative deviation from a target that does not move the count (the HPA's default is 0.1).
TOLERANCE: Final[float] = 0.1


def _policy_table() -> str:
    rows = []
    for name, p in POLICIES.items():
        if name == "off":
            continue
        rows.append(
            f"{name}: targets batchUtilization {p.batch_utilization}, waitingPerReplica "
            f"{p.waiting_per_replica:g}, kvCacheUsage {p.kv_cache_usage}; scaleUp "
            f"stabilization {p.up_stabilization_seconds} s, step {p.up_max_step_replicas}; "
            f"scaleDown stabilization {p.down_stabilization_seconds} s, cooldown "
            f"{p.down_cooldown_seconds} s, step {p.down_max_step_replicas}, idle "
            f"{p.idle_seconds} s"
        )
    return ". ".join(rows)


class AutoscalingTargets(ApiModel):
    """What one ready replica should carry; the autoscaler sizes the pool so that the
    busiest signal meets its target (unset: the policy's value)."""

    batch_utilization: float | None = Field(
        default=None,
        description="Requests in flight (running + waiting) per replica, as a fraction of "
        "its batch capacity (engine.args.maxNumSeqs).",
        gt=0,
        le=1,
    )
    waiting_per_replica: float | None = Field(
        default=None,
        description="Requests queued in the engine (vllm:num_requests_waiting) per replica.",
        gt=0,
        le=10_000,
    )
    kv_cache_usage: float | None = Field(
        default=None,
        description="KV-cache usage (vllm:kv_cache_usage_perc) per replica, in (0, 1].",
        gt=0,
        le=1,
    )
    ttft_p95_ms: int | None = Field(
        default=None,
        description="Optional SLO: p95 time to first token in milliseconds. Above it the pool "
        "grows; it never shrinks a pool on its own. Default: none.",
        ge=1,
        le=600_000,
    )


class ScaleUp(ApiModel):
    """How fast a pool grows."""

    stabilization_seconds: int | None = Field(
        default=None,
        description="Grow only to the lowest count recommended over this window (0: at once).",
        ge=0,
        le=3600,
    )
    max_step_replicas: int | None = Field(
        default=None, description="Replicas added in one decision at most.", ge=1, le=1000
    )


class ScaleDown(ApiModel):
    """How slowly a pool shrinks."""

    stabilization_seconds: int | None = Field(
        default=None,
        description="Shrink only to the highest count recommended over this window.",
        ge=0,
        le=86_400,
    )
    cooldown_seconds: int | None = Field(
        default=None,
        description="No scale-down until this long after the pool's last change (either way).",
        ge=0,
        le=86_400,
    )
    max_step_replicas: int | None = Field(
        default=None, description="Replicas removed in one decision at most.", ge=1, le=1000
    )
    idle_seconds: int | None = Field(
        default=None,
        description="A pool with replicas.min 0 goes to zero after this long without any "
        "request (running, waiting, or held by the router for it); a request held by the "
        "router brings it back at once.",
        ge=0,
        le=604_800,
    )


class Autoscaling(ApiModel):
    """Autoscaling of every pool between replicas.min and replicas.max. A pool with
    min == max is never touched."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.mode) || self.mode != 'external' || "
                "!has(self.policy) || self.policy != 'off'",
                "mode external publishes the autoscaler's desired count: it needs a policy "
                "other than off",
                ".mode",
            ),
            cel(
                "!has(self.scaleUp) || !has(self.scaleUp.stabilizationSeconds) || "
                "!has(self.scaleDown) || !has(self.scaleDown.stabilizationSeconds) || "
                "self.scaleDown.stabilizationSeconds >= self.scaleUp.stabilizationSeconds",
                "scaleDown.stabilizationSeconds must be >= scaleUp.stabilizationSeconds: a pool "
                "that shrinks faster than it grows flaps",
                ".scaleDown.stabilizationSeconds",
            ),
        )
    )

    policy: PolicyName | None = Field(
        default=None,
        description="Named defaults for every setting below; a field set here wins. "
        f"{_policy_table()}. off: every pool runs replicas.min. Default: balanced.",
    )
    mode: AutoscalingMode | None = Field(
        default=None,
        description="operator: the operator writes each Deployment's replicas. external: it "
        "leaves them to KEDA or an HPA and publishes the desired count as the metric "
        "inference_factory_pool_desired_replicas. Default: operator.",
    )
    targets: AutoscalingTargets | None = Field(default=None, description="Per-replica targets.")
    scale_up: ScaleUp | None = Field(default=None, description="Scale-up speed.")
    scale_down: ScaleDown | None = Field(
        default=None, description="Scale-down speed and scale to zero."
    )
    expected_startup_seconds: int | None = Field(
        default=None,
        description="Expected seconds from a scale-up to a Ready replica: demand growth is "
        "projected this far ahead so that capacity arrives before the queue builds (not "
        "pool.startupSeconds, the probe's ceiling). Default: "
        + ", ".join(f"{v} s on {k}" for k, v in EXPECTED_STARTUP_SECONDS.items())
        + ".",
        ge=0,
        le=14_400,
    )

    def effective(self, kind: AcceleratorKind) -> EffectiveAutoscaling:
        """These settings over their policy's defaults, for a pool of this accelerator kind."""
        base = POLICIES[self.policy or "balanced"]
        t = self.targets or AutoscalingTargets()
        up = self.scale_up or ScaleUp()
        down = self.scale_down or ScaleDown()
        return replace(
            base,
            mode=_pick(self.mode, base.mode),
            batch_utilization=_pick(t.batch_utilization, base.batch_utilization),
            waiting_per_replica=_pick(t.waiting_per_replica, base.waiting_per_replica),
            kv_cache_usage=_pick(t.kv_cache_usage, base.kv_cache_usage),
            ttft_p95_ms=t.ttft_p95_ms if t.ttft_p95_ms is not None else base.ttft_p95_ms,
            up_stabilization_seconds=_pick(up.stabilization_seconds, base.up_stabilization_seconds),
            up_max_step_replicas=_pick(up.max_step_replicas, base.up_max_step_replicas),
            down_stabilization_seconds=_pick(
                down.stabilization_seconds, base.down_stabilization_seconds
            ),
            down_cooldown_seconds=_pick(down.cooldown_seconds, base.down_cooldown_seconds),
            down_max_step_replicas=_pick(down.max_step_replicas, base.down_max_step_replicas),
            idle_seconds=_pick(down.idle_seconds, base.idle_seconds),
            expected_startup_seconds=_pick(
                self.expected_startup_seconds, EXPECTED_STARTUP_SECONDS[kind]
            ),
        )


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def effective_autoscaling(spec: Autoscaling | None, kind: AcceleratorKind) -> EffectiveAutoscaling:
    """The settings of a pool under this ``spec.autoscaling`` (None: its defaults, i.e. the
    balanced policy). Whether a factory is autoscaled at all is ``plan.scaling.autoscaled``:
    a factory without ``spec.autoscaling`` is not."""
    return (spec or Autoscaling()).effective(kind)


class ScaleRecommendation(ApiModel):
    """One count the autoscaler recommended, and when (the stabilisation windows' memory)."""

    time: str = Field(
        description="When (RFC 3339).", json_schema_extra={"format": RFC3339}, max_length=64
    )
    replicas: int = Field(description="Recommended replicas.", ge=0)


class PoolAutoscalingStatus(ApiModel):
    """The autoscaler's view of one pool: its decision, and what it remembers for the next."""

    desired_replicas: int = Field(description="Replicas the autoscaler wants.", ge=0)
    current_replicas: int = Field(description="Replicas the Deployment asks for now.", ge=0)
    reason: str = Field(
        description="Why, as one CamelCase word (ScaleUp, Stabilizing, Cooldown, Idle...).",
        max_length=64,
        pattern=CAMEL_CASE_REASON,
    )
    message: str = Field(default="", description="Why, for humans.", max_length=1024)
    last_scale_time: str | None = Field(
        default=None,
        description="Last change of the count (RFC 3339).",
        json_schema_extra={"format": RFC3339},
        max_length=64,
    )
    last_scale_direction: Direction | None = Field(
        default=None, description="Up or Down: the direction of that change."
    )
    idle_since: str | None = Field(
        default=None,
        description="Since when the pool has had no request at all (RFC 3339).",
        json_schema_extra={"format": RFC3339},
        max_length=64,
    )
    demand: float | None = Field(
        default=None, description="Requests in the system at the last decision.", ge=0
    )
    demand_time: str | None = Field(
        default=None,
        description="When that demand was observed (RFC 3339).",
        json_schema_extra={"format": RFC3339},
        max_length=64,
    )
    recommendations: list[ScaleRecommendation] = Field(
        default_factory=list,
        description="Recent recommendations, oldest first, within the longest window.",
        max_length=MAX_RECOMMENDATIONS,
    )
