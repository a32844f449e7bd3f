"""Prometheus metrics of one router instance (own registry: no global state).

The per-request series are reached through `observe_request` and `observe_ttfb`, which keep
the labelled children in a dict: `labels()` validates and locks on every call, which was a
few percent of the router's CPU per request (bench/router_overhead). Label values are
bounded (regions, models the fleet serves or "unknown", HTTP statuses), and so are the
dicts. The token counters add `tenant` (names from the tenants file) and `pool` (from
the fleet): bounded as well.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from factory_router.metering.usage import Usage

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RouterMetrics:
    def __init__(
        self,
        load_age: Callable[[], float],
        load_stale: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "factory_router_requests",
            "Requests answered, by backend region, model and HTTP status.",
            ["region", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "factory_router_request_duration_seconds",
            "Time from request to the end of the response, by backend region and model.",
            ["region", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "factory_router_upstream_ttfb_seconds",
            "Time from sending upstream to its first body byte, by backend region.",
            ["region"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.residency_denials = Counter(
            "factory_router_residency_denials",
            "Requests refused for residency: invalid header, narrowed to nothing, model "
            "not served in the allowed jurisdictions, no compliant backend up.",
            ["reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "factory_router_upstream_errors",
            "Failed upstream attempts (before or after the first byte), by region and kind.",
            ["region", "kind"],
            registry=r,
        )
        self.retries = Counter("factory_router_retries", "Failover attempts made.", registry=r)
        self.retry_budget_exhausted = Counter(
            "factory_router_retry_budget_exhausted",
            "Failovers refused by the retry budget.",
            registry=r,
        )
        self.ejections = Counter(
            "factory_router_ejections", "Endpoints ejected, by region.", ["region"], registry=r
        )
        self.inflight = Gauge(
            "factory_router_inflight_requests",
            "Client requests being handled now.",
            registry=r,
        )
        self.load_age = Gauge(
            "factory_router_load_data_age_seconds",
            "Age of the Prometheus load snapshot (+Inf when there is none).",
            registry=r,
        )
        self.load_age.set_function(load_age)
        self.load_stale = Gauge(
            "factory_router_load_data_stale",
            "1 when routing runs on passive signals only (Prometheus down or stale).",
            registry=r,
        )
        self.load_stale.set_function(load_stale)
        self.probe_rtt = Gauge(
            "factory_router_probe_rtt_seconds",
            "Latest active RTT probe (GET /health) from this router, by backend region.",
            ["region"],
            registry=r,
        )
        self.reload_errors = Counter(
            "factory_router_config_reload_errors",
            "Tenant or backend file reloads rejected (the previous one is kept).",
            ["file"],
            registry=r,
        )
        usage_labels = ["tenant", "model", "region", "pool"]
        self.prompt_tokens = Counter(
            "factory_router_prompt_tokens",
            "Prompt tokens of the requests answered, as the engines reported them in `usage`, "
            "by tenant, model, backend region and pool.",
            usage_labels,
            registry=r,
        )
        self.completion_tokens = Counter(
            "factory_router_completion_tokens",
            "Completion tokens of the requests answered, by tenant, model, backend region, "
            "pool and source: engine (the engines' `usage`) or estimated (a stream cut short "
            "before its usage chunk: one token per content event relayed).",
            [*usage_labels, "source"],
            registry=r,
        )
        self._usage_series: dict[tuple[str, str, str, str, str], tuple[Counter, Counter]] = {}
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._ttfb_series: dict[str, Histogram] = {}

    def observe_request(self, region: str, model: str, status: int, seconds: float) -> None:
        key = (region, model, status)
        series = self._request_series.get(key)
        if series is None:
            series = (
                self.requests.labels(region, model, str(status)),
                self.latency.labels(region, model),
            )
            self._request_series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def observe_ttfb(self, region: str, seconds: float) -> None:
        series = self._ttfb_series.get(region)
        if series is None:
            series = self._ttfb_series[region] = self.ttfb.labels(region)
        series.observe(seconds)

    def observe_usage(self, tenant: str, model: str, region: str, pool: str, usage: Usage) -> None:
        key = (tenant, model, region, pool, usage.source)
        series = self._usage_series.get(key)
        if series is None:
            series = (
                self.prompt_tokens.labels(tenant, model, region, pool),
                self.completion_tokens.labels(tenant, model, region, pool, usage.source),
            )
            self._usage_series[key] = series
        if usage.prompt_tokens:
            series[0].inc(usage.prompt_tokens)
        if usage.completion_tokens:
            series[1].inc(usage.completion_tokens)
