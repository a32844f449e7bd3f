"""The "economics" Grafana dashboard (issue 19, item 4), as data, built with the fleet's own
Grafana builders (tools/grafana.py): cost per million tokens (provisioned and utilised), tokens
per joule and spend per tenant, by region and accelerator kind (GPU and Neuron side by side:
one series per region and kind on the same panel).

It reads the recording rules of the group inference-factory.economics.recording
(deploy/monitoring/alerts.yaml); see their comment for what each figure means. Registered in
tools/dashboards.py (``DASHBOARDS``), so ``factoryctl gen`` (tools/sync_chart.py) writes
deploy/monitoring/dashboards/economics.json and its chart copy with the other dashboards.
"""

from __future__ import annotations

from typing import Any

from tools.grafana import dashboard, row, stat, ts

NAME = "economics"
SEL = 'namespace=~"$namespace", factory=~"$factory", region=~"$region"'
BY = "region, accelerator_kind"  # GPU (nvidia) and Neuron side by side, per region
SIDE_BY_SIDE = "{{region}} {{accelerator_kind}}"
READY_POWER = (
    f"factory:pool_replica_power_watts{{{SEL}}} * on (namespace, factory, pool) group_left "
    f"factory:pool_ready_replicas{{{SEL}}}"
)


def _per_mtok(cost: str, by: str) -> str:
    """1e6 x USD per hour / tokens per hour, aggregated ``by`` (no series without tokens)."""
    return (
        f"1e6 * sum by ({by}) ({cost}{{{SEL}}}) / "
        f"(3600 * sum by ({by}) (factory:pool_tokens:rate5m{{{SEL}}}) > 0)"
    )


def economics() -> dict[str, Any]:
    """Cost per million tokens, tokens per joule and spend per tenant."""
    panels = [
        stat(
            "Cost per million tokens (provisioned)",
            f"1e6 * sum(factory:pool_cost_usd:per_hour{{{SEL}}}) / "
            f"(3600 * sum(factory:pool_tokens:rate5m{{{SEL}}}) > 0)",
            "currencyUSD",
            "Every ready replica billed at its region's price (FleetRegion spec.pricing), over "
            "the tokens (prompt + generated) of the last 5 minutes.",
        ),
        stat(
            "Cost per million tokens (utilised)",
            f"1e6 * sum(factory:pool_utilised_cost_usd:per_hour{{{SEL}}}) / "
            f"(3600 * sum(factory:pool_tokens:rate5m{{{SEL}}}) > 0)",
            "currencyUSD",
            "Replicas billed only for the share of time they ran a request: the floor that "
            "denser packing could reach.",
        ),
        stat(
            "Spend (USD/h)",
            f"sum(factory:pool_cost_usd:per_hour{{{SEL}}})",
            "currencyUSD",
            "What the ready replicas cost per hour, busy or idle.",
        ),
        stat(
            "Tokens per joule",
            f"sum(factory:pool_tokens:rate5m{{{SEL}}}) / (sum({READY_POWER}) > 0)",
            "none",
            "Tokens per second over the ready accelerators' rated power (FleetRegion "
            "spec.power, watts = joules per second).",
        ),
        row("Cost per million tokens"),
        ts(
            "Cost per million tokens by region and accelerator (provisioned)",
            [(_per_mtok("factory:pool_cost_usd:per_hour", BY), SIDE_BY_SIDE)],
            "currencyUSD",
            "GPU (nvidia) and Neuron pools of each region side by side; every ready replica "
            "billed.",
        ),
        ts(
            "Cost per million tokens by region and accelerator (utilised)",
            [(_per_mtok("factory:pool_utilised_cost_usd:per_hour", BY), SIDE_BY_SIDE)],
            "currencyUSD",
            "The same, replicas billed for their busy time only. The gap to provisioned is "
            "idle capacity.",
        ),
        ts(
            "Cost per million tokens by pool (provisioned)",
            [
                (
                    f"factory:pool_cost_per_million_tokens:provisioned_rate5m{{{SEL}}}",
                    "{{factory}}/{{pool}} {{accelerator_type}}",
                )
            ],
            "currencyUSD",
            "The figure of each factory's status.pools[].costPerMillionTokens.",
        ),
        ts(
            "Cost per million tokens by model (provisioned)",
            [(_per_mtok("factory:pool_cost_usd:per_hour", "model"), "{{model}}")],
            "currencyUSD",
            "All pools of a model, wherever they run.",
        ),
        row("Energy"),
        ts(
            "Tokens per joule by region and accelerator",
            [
                (
                    f"sum by ({BY}) (factory:pool_tokens:rate5m{{{SEL}}}) / "
                    f"(sum by ({BY}) ({READY_POWER}) > 0)",
                    SIDE_BY_SIDE,
                )
            ],
            "none",
            "Tokens per second over the ready accelerators' rated power.",
        ),
        ts(
            "Rated power by region and accelerator",
            [(f"sum by ({BY}) ({READY_POWER})", SIDE_BY_SIDE)],
            "watt",
            "Ready replicas x accelerators per replica x watts per accelerator.",
        ),
        row("Tenants"),
        ts(
            "Spend per tenant",
            [
                (
                    f"sum by (tenant) (factory:tenant_spend_usd:per_hour{{{SEL}}})",
                    "{{tenant}}",
                )
            ],
            "currencyUSD",
            "USD per hour: each tenant's tokens (the router's metering) x its pools' "
            "provisioned cost per token.",
        ),
        ts(
            "Spend per tenant by region and accelerator",
            [
                (
                    f"sum by (tenant, {BY}) (factory:tenant_spend_usd:per_hour{{{SEL}}})",
                    "{{tenant}} {{region}} {{accelerator_kind}}",
                )
            ],
            "currencyUSD",
            "USD per hour, where each tenant's tokens were made.",
        ),
        ts(
            "Cost per million tokens per tenant",
            [
                (
                    f"1e6 * sum by (tenant) (factory:tenant_spend_usd:per_hour{{{SEL}}}) / "
                    "(3600 * sum by (tenant) (factory:tenant_pool_tokens:rate5m"
                    f"{{{SEL}}} and factory:tenant_spend_usd:per_hour) > 0)",
                    "{{tenant}}",
                )
            ],
            "currencyUSD",
            "A tenant's spend over its tokens: the blend of the pools that served it.",
        ),
    ]
    return dashboard(
        "inference-factory-economics",
        "Inference Factory / Economics",
        "Cost per million tokens, tokens per joule and spend per tenant, by region and "
        "accelerator.",
        panels,
    )
