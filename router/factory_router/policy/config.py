"""Every timeout, limit and tuning constant of the router, defined once.

The settings layer (`factory_router.main`) may override any of these from flags or the
environment; nothing else in the router hard-codes a timeout or a connection limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Timeouts:
    """Timeouts, seconds. There is deliberately no total timeout on the upstream hop: a
    long stream is legitimate; a *stalled* one is caught by `first_byte` and `idle`."""

    connect: float = 3.0  # TCP connect to an engine
    pool_acquire: float = 5.0  # waiting for a free connection slot
    first_byte: float = 60.0  # request sent -> first body byte (covers queueing + prefill)
    idle: float = 120.0  # between two body chunks once streaming
    grace_period: float = 30.0  # graceful shutdown: in-flight streams may finish
    prometheus_query: float = 2.0  # one PromQL query
    probe: float = 2.0  # one RTT probe (GET /health)
    client_idle: float = 75.0  # a client's connection between two requests, or not reading
    client_request: float = 60.0  # a client's request, first byte to last (slow senders)


@dataclass(frozen=True)
class Limits:
    """Connection and size limits."""

    max_connections: int = 1024  # whole upstream pool
    max_connections_per_host: int = 256  # one engine
    keepalive_expiry: float = 30.0
    max_body_bytes: int = 4 * 1024 * 1024  # client request bodies; larger -> 413
    max_head_bytes: int = 64 * 1024  # client request line + headers; larger -> 431
    # Client connections open at once; one more is closed as it is accepted. Well under
    # the usual 20k-65k file descriptors, with room for the upstream pool beside it.
    max_client_connections: int = 4096
    max_attempts: int = 3  # per request, the first try included
    max_upstream_line_bytes: int = 8190  # an engine's status line or one header line
    max_upstream_headers: int = 64  # header lines in an engine's answer; more -> protocol
    # Requests one tenant may have in flight (tenants file: max_concurrent_requests
    # overrides); beyond: 429. A quarter of max_connections: no tenant holds the whole pool.
    tenant_max_concurrent_requests: int = 256  # 0: no limit


@dataclass(frozen=True)
class RetryBudgetConfig:
    """Retries allowed: `ratio` of recent requests plus `min_per_second` (Finagle-style)."""

    ratio: float = 0.2
    min_per_second: float = 5.0
    window_seconds: float = 10.0


@dataclass(frozen=True)
class EjectionConfig:
    """Outlier ejection: `consecutive_failures` in a row eject an endpoint for
    `base_seconds * 2**(n-1)` (n = ejections in a row), capped at `max_seconds`."""

    consecutive_failures: int = 3
    base_seconds: float = 1.0
    max_seconds: float = 60.0


@dataclass(frozen=True)
class ScoringConfig:
    """Weights of the predicted time to first token (all in milliseconds)."""

    default_rtt_ms: float = 150.0  # region pair absent from the RTT matrix
    same_region_rtt_ms: float = 1.0
    default_ttft_ms: float = 50.0  # no observed TTFT yet
    default_hold_ms: float = 1000.0  # no observed slot-holding time yet (one request)
    per_outstanding_ms: float = 8.0  # each request running/queued slows the batch
    waiting_factor: float = 1.0  # each queued request costs about one TTFT more
    kv_knee: float = 0.8  # KV-cache usage above which preemption risk grows
    kv_penalty_ms: float = 200.0  # added at 100% KV usage (linear from the knee)
    affinity_bonus_ms: float = 30.0  # prefix-cache hit saves prefill
    affinity_max_outstanding: int = 64  # preferred replica "overloaded" above this
    affinity_prefix_chars: int = 512  # prompt prefix hashed for affinity
    # ms of predicted TTFT that one USD per million tokens is worth (0 = ignore cost); the
    # cost of a backend is its pool's (`policy.cost`, `CostConfig`)
    cost_weight_ms: float = 0.0
    snapshot_stale_seconds: float = 15.0  # older load data is ignored (passive only)
    rtt_window_seconds: float = 30.0  # measured RTT: minimum over this window
    # Client-observed time to first byte (`signals.latency`): the median of the last
    # `observed_max_samples` streamed first bytes within `observed_window_seconds` (at least
    # `observed_min_samples` of them), or the slower of the last `observed_recent_samples`
    # when both are below it (a recovery shows at once). It replaces the engine's own TTFT
    # in the score when higher than engine * (1 + ratio) + margin: slow in front of it.
    observed_window_seconds: float = 30.0
    observed_max_samples: int = 5
    observed_min_samples: int = 3
    observed_recent_samples: int = 2
    observed_wins_ratio: float = 0.5
    observed_wins_margin_ms: float = 50.0


@dataclass(frozen=True)
class CostConfig:
    """A pool's cost per million tokens for the cost term (`policy.cost`).

    The live figure (`status.pools[].costPerMillionTokens`: the pool's bill over the tokens
    of the last 5 minutes) is kept within [`floor_fraction`, `ceiling_multiple`] x the
    pool's list-price estimate: a 0 (a rounding, a pricing typo) must not draw every request,
    and a pool that served a trickle reads dear by its idleness, not its price, which would
    keep it idle. The estimate converts the list price per replica-hour with the median
    (live / list price) of the model's pools that have both, else of the fleet's, else at
    `nominal_tokens_per_second` per replica (no live figure anywhere: the list-price order)."""

    nominal_tokens_per_second: float = 1000.0  # per replica, only when nothing is live
    floor_fraction: float = 0.25
    ceiling_multiple: float = 4.0


@dataclass(frozen=True)
class LatencyEjectionConfig:
    """Latency outliers (`policy.health.LatencyEjector`): a replica (or a region) whose
    client-observed TTFT exceeds both `outlier_ratio` x and `outlier_margin_ms` + the median
    of its peers' is degraded (ranked after every other candidate) for `base_seconds *
    2**(n-1)`, capped at `max_seconds`; it is lifted early once it is within half those
    bounds. A degraded backend (or one whose observed figure outweighed its engine's) still
    gets a probe: `probe_share` of the requests, at most one per backend per
    `probe_interval_seconds`."""

    outlier_ratio: float = 3.0
    outlier_margin_ms: float = 200.0
    base_seconds: float = 2.0
    max_seconds: float = 30.0
    probe_interval_seconds: float = 1.0
    probe_share: float = 0.01


@dataclass(frozen=True)
class HoldConfig:
    """Scale from zero (`policy.hold`, `app.hold`): a request whose model's compliant pools
    are all at zero replicas, or starting, waits for one to become ready.

    `timeout_seconds` covers a simulated or small engine and a warm node (pod start, weights
    from a local cache: tens of seconds); a cold real model load takes minutes (image pull,
    weights download, Neuron compile), longer than most clients and proxies in front of the
    router wait (60-120 s). Past it the client gets 503 with `Retry-After`, the pool keeps
    starting (the operator does not shrink it within its expected startup time) and the
    retry finds it ready. `max_requests` per model bounds the memory held (each request
    keeps its body, up to `Limits.max_body_bytes`) and the connections kept open."""

    max_requests: int = 128  # held at once per model; beyond: 503 at once; 0: never hold
    timeout_seconds: float = 120.0  # longest hold; a client's x-factory-hold-timeout narrows
    retry_after_seconds: int = 30  # Retry-After on a 503 of a hold (full, or waited out)
    poll_seconds: float = 0.2  # how often a held request looks for a ready backend


@dataclass(frozen=True)
class FlowConfig:
    """Priority and fairness under saturation (`factory_router.flow`): when every compliant
    engine of a request is at its batch capacity, the request waits in the router, highest
    class first, tenants of one class in turn.

    `max_queued` bounds the requests waiting at once (all classes, all models; each keeps its
    body, up to `Limits.max_body_bytes`); one more sheds the lowest class first. A request
    never waits longer than its class's `max_wait_*`: an interactive request that waited
    seconds has missed its SLO, and its client does better retrying (`retry_after_seconds`)
    than waiting on; a batch request may wait a minute."""

    # Off by default: with it on, requests beyond the engines' batches wait in the router,
    # where the operator's autoscaler (engines' running + waiting) does not see them.
    enabled: bool = False
    max_queued: int = 512
    max_wait_interactive: float = 5.0
    max_wait_standard: float = 30.0
    max_wait_batch: float = 60.0
    retry_after_seconds: int = 2  # Retry-After of a 503 capacity_shed
    # While requests wait, capacity is looked for on every request end of this router and
    # this often (other routers' requests ending show in the load snapshot only).
    poll_seconds: float = 0.05


@dataclass(frozen=True)
class RouterConfig:
    """All of the above together."""

    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    ejection: EjectionConfig = field(default_factory=EjectionConfig)
    latency_ejection: LatencyEjectionConfig = field(default_factory=LatencyEjectionConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    hold: HoldConfig = field(default_factory=HoldConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    prometheus_interval: float = 2.0  # seconds between load snapshots
    reload_interval: float = 1.0  # seconds between checks of tenants/backends files
    probe_interval: float = 2.0  # seconds between RTT probes of each region (0 = none)
