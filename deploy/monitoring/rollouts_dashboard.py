"""The "rollouts" Grafana dashboard (canary rollouts, docs/rollouts.md), as data, built with
the fleet's own Grafana builders (tools/grafana.py): where each factory's rollout is (its
phase, how long its step has run, the canary weight per pool, rollbacks by failed check),
and canary against stable as clients saw them: error ratio, TTFT p95, ITL p95, generation
throughput and attempts per second, one series per pool and revision.

Which revision is the canary is in the factory's status (status.pools[].canary.revision), not
in Prometheus: the per-revision panels put every revision of a pool side by side (legend
"<pool> <revision>"); during a rollout a pool has two, the stable one with most of the
attempts and the canary with about the canary weight's share of them.

Sources: the operator's factory_operator_rollout_* series and the router's per-revision
factory_router_backend_* series (labels namespace, factory, pool: the bare pool name,
revision). Registered in tools/dashboards.py (``DASHBOARDS``), so ``factoryctl gen``
(tools/sync_chart.py) writes deploy/monitoring/dashboards/rollouts.json and its chart copy
with the other dashboards.
"""

from __future__ import annotations

from typing import Any

from tools.grafana import RATE, dashboard, row, stat, ts, variable

NAME = "rollouts"
FACTORY = 'namespace=~"$namespace", factory=~"$factory"'
POOL = f'{FACTORY}, pool=~"$pool"'
OK = f'{POOL}, outcome="ok"'
# The age at which InferenceFactoryRolloutStuck calls a step stuck (deploy/monitoring/alerts.yaml).
STEP_STUCK_SECONDS = 30 * 60
PER_REVISION = "namespace, factory, pool, revision"
SIDE_BY_SIDE = "{{pool}} {{revision}}"
# The pools of the selected factories and regions, from the operator's pool series (the
# router's per-revision series have no region). "All" lists them, so the region narrows it.
POOL_VARIABLE = variable(
    "pool",
    "Pool",
    f'label_values(factory_operator_pool_replicas{{{FACTORY}, region=~"$region"}}, pool)',
    all_value=None,
)


def _rate(metric: str, selector: str = POOL) -> str:
    return f"sum by ({PER_REVISION}) (rate({metric}{{{selector}}}[{RATE}]))"


def _p95(histogram: str) -> str:
    return (
        f"histogram_quantile(0.95, sum by ({PER_REVISION}, le) "
        f"(rate({histogram}_bucket{{{POOL}}}[{RATE}])))"
    )


def _in_phase(phases: str) -> str:
    """How many factories are in one of ``phases`` (a regex), 0 when none is."""
    return (
        "count(max by (namespace, factory) (factory_operator_rollout_phase"
        f'{{phase=~"{phases}", {FACTORY}}}) == 1) or vector(0)'
    )


def rollouts() -> dict[str, Any]:
    """Rollout progress per factory, and canary against stable per pool and revision."""
    attempts = "factory_router_backend_attempts_total"
    panels = [
        stat(
            "Rollouts in progress",
            _in_phase("Progressing|Promoting|Paused"),
            "none",
            "Factories whose rollout is Progressing, Promoting or Paused.",
        ),
        stat(
            "Rolled back",
            _in_phase("RolledBack"),
            "none",
            "Factories whose last rollout was rolled back (InferenceFactoryRolledBack); the "
            "RolledBack Event of `kubectl describe inferencefactory` names the failed check.",
            thresholds=[(1, "orange")],
        ),
        stat(
            "Steps older than 30 minutes",
            f"count(time() - max by (namespace, factory) (factory_operator_rollout_step_"
            f"entered_timestamp_seconds{{{FACTORY}}} > 0) > {STEP_STUCK_SECONDS}) or vector(0)",
            "none",
            "Factories whose current step began more than 30 minutes ago, whatever the phase "
            "(InferenceFactoryRolloutStuck counts Progressing and Promoting only).",
            thresholds=[(1, "orange")],
        ),
        stat(
            "Canary pools",
            f"count(factory_operator_rollout_canary_weight{{{POOL}}}) or vector(0)",
            "none",
            "Pools with a canary Deployment (weight 0 while it starts).",
        ),
        row("Rollout"),
        ts(
            "Rollout phase by factory",
            [
                (
                    "max by (namespace, factory, phase) "
                    f"(factory_operator_rollout_phase{{{FACTORY}}}) == 1",
                    "{{namespace}}/{{factory}} {{phase}}",
                )
            ],
            "none",
            "The phase each factory's rollout is in (Stable, Progressing, Paused, Promoting, "
            "RolledBack): one series per phase, drawn while the factory is in it.",
        ),
        ts(
            "Step age by factory",
            [
                (
                    "time() - max by (namespace, factory) (factory_operator_rollout_step_"
                    f"entered_timestamp_seconds{{{FACTORY}}} > 0)",
                    "{{namespace}}/{{factory}}",
                )
            ],
            "s",
            "How long the rollout has been in its current step (status.rollout."
            "stepEnteredAt). The line is InferenceFactoryRolloutStuck's level; a Paused "
            "rollout's step restarts its clock when resumed.",
            thresholds=[(STEP_STUCK_SECONDS, "red")],
        ),
        ts(
            "Canary weight by pool",
            [
                (
                    "max by (namespace, factory, pool) "
                    f"(factory_operator_rollout_canary_weight{{{POOL}}})",
                    "{{factory}}/{{pool}}",
                )
            ],
            "percent",
            "Percent of the pool's traffic the router sends to its canary "
            "(status.pools[].canary.weight): the step's weight, 0 while the canary starts "
            "and once it is rolled back.",
        ),
        ts(
            "Rollbacks by failed check (1h)",
            [
                (
                    "sum by (namespace, factory, check) (increase("
                    f"factory_operator_rollout_rollbacks_total{{{FACTORY}}}[1h]))",
                    "{{factory}} {{check}}",
                )
            ],
            "none",
            "Rollbacks in the last hour, by the check that failed (TtftP95, ErrorRatio, "
            "GoldenPrompt, CanaryReady, Deadline, ...).",
        ),
        row("Canary against stable, per revision"),
        # 1 - ok / all, not error / all: a revision without a single error still has a ratio
        # (0), where the error series would be absent.
        ts(
            "Error ratio by revision",
            [
                (
                    f"1 - {_rate(attempts, OK)} / {_rate(attempts)}",
                    SIDE_BY_SIDE,
                )
            ],
            "percentunit",
            "Share of the router's attempts to each revision that failed: connect failure, "
            "timeout, 5xx or broken stream (the ErrorRatio gate's figure).",
        ),
        ts(
            "TTFT p95 by revision",
            [(_p95("factory_router_backend_ttft_seconds"), SIDE_BY_SIDE)],
            "s",
            "Request sent to first body byte or SSE event, as the router saw it (the TtftP95 "
            "gate's figure).",
        ),
        ts(
            "ITL p95 by revision",
            [(_p95("factory_router_backend_itl_seconds"), SIDE_BY_SIDE)],
            "s",
            "Gaps between SSE data events of streamed answers (the ItlP95 gate's figure).",
        ),
        ts(
            "Generation throughput by revision",
            [
                (
                    f"{_rate('factory_router_backend_completion_tokens_total')} / "
                    f"{_rate('factory_router_backend_stream_seconds_total')}",
                    SIDE_BY_SIDE,
                )
            ],
            "short",
            "Completion tokens per second of streaming (first to last token of each "
            "answer): the Throughput gate's figure.",
        ),
        ts(
            "Attempts/s by revision",
            [(_rate(attempts), SIDE_BY_SIDE)],
            "reqps",
            "Upstream attempts per revision: during a step the canary's share follows the "
            "canary weight. Too few canary attempts leave the SLO gates inconclusive "
            "(gates.slo.minRequests).",
            width=24,
        ),
    ]
    return dashboard(
        "inference-factory-rollouts",
        "Inference Factory / Rollouts",
        "Canary rollouts: phase, step age, canary weight and rollbacks per factory; canary "
        "against stable per pool and revision.",
        panels,
        variables=[POOL_VARIABLE],
    )
