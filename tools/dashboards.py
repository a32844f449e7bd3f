"""Grafana dashboards of the fleet, as data: `tools/sync_chart.py` writes them to
deploy/monitoring/dashboards/*.json (and copies them into the chart).

Three dashboards here: fleet overview, per-region SLOs (TTFT, inter-token latency, queue,
KV cache) and residency (denials, traffic by jurisdiction); two more, unit economics and
canary rollouts, are built by deploy/monitoring/economics_dashboard.py and
rollouts_dashboard.py with the same builders and registered below, so `factoryctl gen` writes
them with the others. Queries use the fleet's label set
(namespace, factory, pool, region, jurisdiction, pod; vLLM adds model_name and engine), the
vLLM metric names (>= 0.12), the operator's factory_operator_* and the router's
factory_router_* metrics. Every query filters on the dashboard's variables with `=~`, so
"All" (`.*`) shows the whole fleet.
"""

from __future__ import annotations

from typing import Any

from deploy.monitoring.economics_dashboard import NAME as ECONOMICS
from deploy.monitoring.economics_dashboard import economics
from deploy.monitoring.rollouts_dashboard import NAME as ROLLOUTS
from deploy.monitoring.rollouts_dashboard import rollouts
from tools.grafana import RATE, dashboard, row, stat, ts

SEL = 'namespace=~"$namespace", factory=~"$factory", region=~"$region"'
TTFT_SLO_SECONDS = "2.5"  # the SLO of deploy/monitoring/alerts.yaml: 99% within 2.5 s
TTFT_SLO_TARGET = 0.99
TTFT_SLO_BUDGET = 0.01
# The burn rates and the KV-cache level of the alerts (deploy/monitoring/alerts.yaml).
BURN_RATE_SLOW, BURN_RATE_FAST = 6, 14.4
KV_CACHE_SATURATION = 0.95


def _quantile(q: str, metric: str, by: str) -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{SEL}}}"
        f"[$__rate_interval])))"
    )


def fleet_overview() -> dict[str, Any]:
    """What runs where, how much traffic, and whether the operator is converged."""
    not_ready = (
        "count(max by (namespace, factory) (factory_operator_factory_condition{"
        'type="Ready", status="False", reason!="ManagedElsewhere", '
        'namespace=~"$namespace", factory=~"$factory"}) == 1) or vector(0)'
    )
    panels = [
        stat(
            "Factories ready",
            "count(max by (namespace, factory) (factory_operator_factory_"
            'condition{type="Ready", status="True", namespace=~"$namespace", '
            'factory=~"$factory"}) == 1) or vector(0)',
            "none",
            "Factories whose Ready condition is True.",
        ),
        stat(
            "Factories not ready",
            not_ready,
            "none",
            "Ready=False for a reason other than ManagedElsewhere (see the alert's runbook).",
            thresholds=[(1, "red")],
        ),
        stat(
            "Ready / desired replicas",
            f'sum(factory_operator_pool_replicas{{kind="ready", '
            f'{SEL}}}) / sum(factory_operator_pool_replicas{{kind="desired", {SEL}}})',
            "percentunit",
            "Share of the replicas the operator wants that are ready.",
            thresholds=[(0.9, "orange"), (1, "green")],
            base_colour="red",
        ),
        stat(
            "Router requests/s",
            "sum(rate(factory_router_requests_total[$__rate_interval]))",
            "reqps",
            "Requests answered by all router replicas.",
        ),
        row("Capacity"),
        ts(
            "Replicas by region",
            [
                (
                    f'sum by (region) (factory_operator_pool_replicas{{kind="desired", {SEL}}})',
                    "{{region}} desired",
                ),
                (
                    f'sum by (region) (factory_operator_pool_replicas{{kind="ready", {SEL}}})',
                    "{{region}} ready",
                ),
            ],
            "none",
            "Desired (replicas.min) and ready engine replicas per region, from the operator.",
        ),
        ts(
            "Requests running / waiting by region",
            [
                (f"sum by (region) (vllm:num_requests_running{{{SEL}}})", "{{region}} running"),
                (f"sum by (region) (vllm:num_requests_waiting{{{SEL}}})", "{{region}} waiting"),
            ],
            "none",
            "Sequences in the engines' batches and in their queues.",
        ),
        row("Traffic"),
        ts(
            "Router requests/s by backend region",
            [
                (
                    'sum by (region) (rate(factory_router_requests_total{region=~"$region"}'
                    "[$__rate_interval]))",
                    "{{region}}",
                )
            ],
            "reqps",
            "Where the router sent traffic (backend region).",
        ),
        ts(
            "Router responses/s by status",
            [
                (
                    "sum by (status) (rate(factory_router_requests_total[$__rate_interval]))",
                    "{{status}}",
                )
            ],
            "reqps",
            "HTTP status of the router's answers: 4xx residency and auth refusals, "
            "5xx no backend or upstream failures.",
        ),
        ts(
            "Tokens/s by factory",
            [
                (
                    f"sum by (factory) (rate(vllm:prompt_tokens_total{{{SEL}}}[$__rate_interval]))",
                    "{{factory}} prompt",
                ),
                (
                    f"sum by (factory) (rate(vllm:generation_tokens_total{{{SEL}}}"
                    f"[$__rate_interval]))",
                    "{{factory}} generated",
                ),
            ],
            "short",
            "Prompt (prefill) and generated tokens.",
        ),
        ts(
            "Prefix-cache hit ratio by factory",
            [
                (
                    f"sum by (factory) (rate(vllm:prefix_cache_hits_total{{{SEL}}}"
                    f"[$__rate_interval])) / "
                    f"sum by (factory) (rate(vllm:prefix_cache_queries_total{{{SEL}}}"
                    f"[$__rate_interval]))",
                    "{{factory}}",
                )
            ],
            "percentunit",
            "Share of prompt tokens served from the prefix cache (router affinity helps).",
        ),
        ts(
            "Router latency",
            [
                (
                    "histogram_quantile(0.5, sum by (le) "
                    "(rate(factory_router_request_duration_seconds_bucket[$__rate_interval])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.99, sum by (le) "
                    "(rate(factory_router_request_duration_seconds_bucket[$__rate_interval])))",
                    "p99",
                ),
            ],
            "s",
            "Request to end of response as the router sees it (streams included).",
        ),
        ts(
            "Upstream time to first byte p99 by region",
            [
                (
                    "histogram_quantile(0.99, sum by (region, le) (rate("
                    'factory_router_upstream_ttfb_seconds_bucket{region=~"$region"}'
                    "[$__rate_interval])))",
                    "{{region}}",
                )
            ],
            "s",
            "Router -> engine first byte: queueing, prefill and the inter-region round trip.",
        ),
        row("Operator"),
        ts(
            "Reconciles/s by outcome",
            [
                (
                    "sum by (outcome) (rate(factory_operator_reconciles_total[$__rate_interval]))",
                    "{{outcome}}",
                )
            ],
            "ops",
            "ok, retry (transient API errors) and permanent (a spec that cannot work).",
        ),
        ts(
            "API writes/s",
            [
                (
                    "sum by (verb, kind) (rate(factory_operator_api_writes_total"
                    "[$__rate_interval]))",
                    "{{verb}} {{kind}}",
                )
            ],
            "ops",
            "Writes the operator sends; flat at zero once converged (no churn).",
        ),
    ]
    return dashboard(
        "inference-factory-fleet",
        "Inference Factory / Fleet overview",
        "Regions, pools, readiness, traffic and the operator.",
        panels,
    )


def region_slos() -> dict[str, Any]:
    """The engine-side SLO signals per region."""
    within = (
        f"sum by (region) (rate(vllm:time_to_first_token_seconds_bucket{{le="
        f'"{TTFT_SLO_SECONDS}", {SEL}}}[{{w}}])) / sum by (region) '
        f"(rate(vllm:time_to_first_token_seconds_count{{{SEL}}}[{{w}}]))"
    )
    panels = [
        row("Time to first token"),
        ts(
            "TTFT p50 / p99 by region",
            [
                (_quantile("0.5", "vllm:time_to_first_token_seconds", "region"), "{{region}} p50"),
                (_quantile("0.99", "vllm:time_to_first_token_seconds", "region"), "{{region}} p99"),
            ],
            "s",
            "Engine-side time to first token (queueing + prefill); the line is the SLO.",
            thresholds=[(float(TTFT_SLO_SECONDS), "red")],
        ),
        ts(
            f"Requests within the TTFT SLO ({TTFT_SLO_SECONDS} s)",
            [(within.replace("{w}", RATE), "{{region}}")],
            "percentunit",
            "Share of requests whose first token came within the SLO (target 99%).",
            thresholds=[(TTFT_SLO_TARGET, "green")],
            base_colour="red",
        ),
        ts(
            "TTFT error-budget burn rate (1h)",
            [(f"(1 - ({within.replace('{w}', '1h')})) / {TTFT_SLO_BUDGET}", "{{region}}")],
            "none",
            "1 spends the 30-day budget in 30 days; the slow-burn alert warns at 6 (over 6h), "
            "the fast-burn alert pages at 14.4.",
            thresholds=[(BURN_RATE_SLOW, "orange"), (BURN_RATE_FAST, "red")],
        ),
        ts(
            "TTFT p99 by pool",
            [
                (
                    _quantile("0.99", "vllm:time_to_first_token_seconds", "region, pool"),
                    "{{region}} {{pool}}",
                )
            ],
            "s",
            "Finds the one slow pool of a region; the line is the SLO.",
            thresholds=[(float(TTFT_SLO_SECONDS), "red")],
        ),
        row("Decode"),
        ts(
            "Inter-token latency p50 / p99 by region",
            [
                (_quantile("0.5", "vllm:inter_token_latency_seconds", "region"), "{{region}} p50"),
                (_quantile("0.99", "vllm:inter_token_latency_seconds", "region"), "{{region}} p99"),
            ],
            "s",
            "Time between two generated tokens of a stream.",
        ),
        ts(
            "End-to-end request latency p99 by region",
            [(_quantile("0.99", "vllm:e2e_request_latency_seconds", "region"), "{{region}}")],
            "s",
            "Whole request inside the engine.",
        ),
        row("Queue and KV cache"),
        ts(
            "Waiting requests by region",
            [(f"sum by (region) (vllm:num_requests_waiting{{{SEL}}})", "{{region}}")],
            "none",
            "Requests queued in the engines: the first sign of missing capacity.",
        ),
        ts(
            "Running requests by region",
            [(f"sum by (region) (vllm:num_requests_running{{{SEL}}})", "{{region}}")],
            "none",
            "Sequences in the running batches.",
        ),
        ts(
            "KV-cache usage by pool (max replica)",
            [(f"max by (region, pool) (vllm:kv_cache_usage_perc{{{SEL}}})", "{{region}} {{pool}}")],
            "percentunit",
            "Above ~95% vLLM preempts sequences (see InferenceKVCacheSaturation).",
            thresholds=[(KV_CACHE_SATURATION, "red")],
        ),
        ts(
            "Prefix-cache hit ratio by region",
            [
                (
                    f"sum by (region) (rate(vllm:prefix_cache_hits_total{{{SEL}}}"
                    f"[$__rate_interval])) / "
                    f"sum by (region) (rate(vllm:prefix_cache_queries_total{{{SEL}}}"
                    f"[$__rate_interval]))",
                    "{{region}}",
                )
            ],
            "percentunit",
            "Prompt tokens served from the prefix cache.",
        ),
    ]
    return dashboard(
        "inference-factory-region-slo",
        "Inference Factory / Region SLOs",
        "TTFT, inter-token latency, queue and KV cache per region.",
        panels,
    )


def residency() -> dict[str, Any]:
    """Residency: what the router refused, and where the traffic was processed."""
    panels = [
        stat(
            "Residency denials (last 1h)",
            "sum(increase(factory_router_residency_denials_total[1h])) or vector(0)",
            "none",
            "Requests refused for residency reasons by all router replicas.",
            thresholds=[(1, "orange")],
        ),
        stat(
            "Jurisdictions serving",
            f"count(count by (jurisdiction) (vllm:num_requests_running{{{SEL}}}))",
            "none",
            "Jurisdictions with at least one engine reporting.",
        ),
        row("Denials"),
        ts(
            "Residency denials/s by reason",
            [
                (
                    "sum by (reason) (rate(factory_router_residency_denials_total"
                    "[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            "reqps",
            "invalid_header, narrowed_to_nothing, model_not_in_jurisdictions, "
            "no_compliant_backend.",
        ),
        ts(
            "Router refusals/s by status",
            [
                (
                    'sum by (status) (rate(factory_router_requests_total{status=~"4..|5.."}'
                    "[$__rate_interval]))",
                    "{{status}}",
                )
            ],
            "reqps",
            "400 bad residency header, 401 unknown key, 403 narrowed "
            "to nothing, 404 model not in the tenant's jurisdictions, 503 no compliant backend.",
        ),
        row("Traffic by jurisdiction"),
        ts(
            "Requests/s processed by jurisdiction",
            [
                (
                    "sum by (jurisdiction) "
                    f"(rate(vllm:e2e_request_latency_seconds_count{{{SEL}}}[$__rate_interval]))",
                    "{{jurisdiction}}",
                )
            ],
            "reqps",
            "Requests finished by engines, by the jurisdiction of their region.",
        ),
        ts(
            "Tokens/s processed by jurisdiction",
            [
                (
                    f"sum by (jurisdiction) (rate(vllm:prompt_tokens_total{{{SEL}}}"
                    f"[$__rate_interval])) + "
                    f"sum by (jurisdiction) (rate(vllm:generation_tokens_total{{{SEL}}}"
                    f"[$__rate_interval]))",
                    "{{jurisdiction}}",
                )
            ],
            "short",
            "Prompt and generated tokens, by jurisdiction.",
        ),
        ts(
            "Router requests/s by backend region",
            [
                (
                    'sum by (region) (rate(factory_router_requests_total{region=~"$region"}'
                    "[$__rate_interval]))",
                    "{{region}}",
                )
            ],
            "reqps",
            "Where the router sent traffic.",
        ),
        ts(
            "Ready replicas by jurisdiction",
            [
                (
                    "sum by (jurisdiction) "
                    f'(factory_operator_pool_replicas{{kind="ready", {SEL}}})',
                    "{{jurisdiction}}",
                )
            ],
            "none",
            "Engine capacity available per jurisdiction.",
        ),
    ]
    return dashboard(
        "inference-factory-residency",
        "Inference Factory / Residency",
        "Residency denials and where traffic was processed.",
        panels,
    )


DASHBOARDS = {
    "fleet-overview": fleet_overview,
    "region-slos": region_slos,
    "residency": residency,
    ECONOMICS: economics,
    ROLLOUTS: rollouts,
}
