"""Predicted time to first token (TTFT) of a backend, split into explainable parts.

    predicted = rtt(client region -> backend region)   measured by this router (probes and
                                              first bytes) when the client is in its own
                                              region, else the configured matrix
              + ttft                          engine-side TTFT: Prometheus (1 min mean), else
                                              observed by the router minus RTT, else a default;
                                              the client-observed figure instead when it is
                                              materially higher (see below)
              + queue                         see below
              + kv_penalty                    KV-cache above the knee: preemption risk
    score     = predicted - affinity_bonus + cost_weight * cost
    cost                         = the pool's USD per million tokens: its live figure
                                   (the operator's, at most a minute old) held near its
                                   list price, else its list price converted (`policy.cost`);
                                   cost_weight = ms of TTFT one USD per million tokens is worth

    queue, batch capacity known  = (min(outstanding, capacity) - min(reflected, capacity))+
                                   * per_outstanding
                                 + slot_wait
           slot_wait             = (max(0, outstanding + 1 - capacity) + busy ** capacity)
                                   * hold / capacity
           (requests beyond the batch wait for a slot; slots free at capacity / hold,
            hold = how long a request keeps its slot, observed by the router;
            busy ** capacity, busy = min(outstanding, capacity) / capacity, is the chance
            that the free slots are taken first by requests this router cannot see: other
            routers, the snapshot's lag. It matters for small batches: one of two slots
            busy costs a quarter of a slot wait, 32 of 64 nothing)
    queue, capacity unknown      = (outstanding - reflected)+ * per_outstanding
                                 + waiting * waiting_factor * ttft
    reflected                    = the snapshot's `running` when ttft is the engine's own
                                   mean: that TTFT was measured with about that batch, so
                                   only the requests beyond it slow the next one further
                                   (charging the whole batch again sent clients 190 ms
                                   away from a replica 100 ms faster); 0 otherwise

Client-observed TTFT (`Observed`): the windowed median of the replica's streamed first
bytes, else of its pool's replicas, else (only for a pool this router has not tried
lately) of its region's fastest pool of the model, minus the router's RTT to the region.
Replicas of one pool share what can stall in front of an engine; a region's pools share
only the path, so another pool's brownout is not held against a pool that is being
measured (a region-wide brownout is the latency ejector's: `policy.route`).
When it exceeds the engine's figure by more than `observed_wins_ratio` and
`observed_wins_margin_ms`, the replica is slow in front of the engine (network, a sidecar,
a throttled tokenizer) and clients wait for what they observe, not for what the engine
reports: the observed figure is the `ttft` part (`ttft_source` = "observed"). It is
never used to make a replica look faster than its engine says.

`outstanding` blends the snapshot with the router's own in-flight count: the snapshot's
running+waiting, plus what this router added or finished since the snapshot was taken
(so a few-seconds-old snapshot does not send everyone to the replica that *was* idle),
and never less than what this router alone has in flight there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

from factory_router.policy.config import ScoringConfig
from factory_router.policy.fleet import Backend, Fleet


@dataclass(frozen=True)
class Observed:
    """Client-observed time to first byte (router -> first byte, RTT included), ms."""

    replica_ms: float | None = None  # this replica, None without enough recent samples
    region_ms: float | None = None  # its region's fastest pool of the same model
    samples: int = 0  # recent samples of the replica
    pool_ms: float | None = None  # its pool's replicas (of the same model)
    pool_samples: int = 0  # recent samples of the pool


@dataclass(frozen=True)
class LoadSample:
    """One backend's load from the Prometheus snapshot."""

    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float | None = None  # 0..1
    ttft_ms: float | None = None  # engine-side TTFT, mean over the last minute


class LoadView(Protocol):
    """What the policy may know about load; implemented by `factory_router.signals`."""

    def sample(self, backend: Backend) -> LoadSample | None:
        """Fresh snapshot data for this backend, None when absent or stale."""

    def inflight(self, backend_id: str) -> int:
        """Requests this router has in flight to the backend now."""

    def inflight_at_snapshot(self, backend_id: str) -> int:
        """Requests this router had in flight when the current snapshot was taken."""

    def observed_ttft_ms(self, backend_id: str) -> float | None:
        """Time to first byte observed by this router (includes the network)."""

    def observed_duration_ms(self, backend_id: str) -> float | None:
        """How long a request holds a batch slot there, as observed by this router."""

    def capacity(self, backend: Backend) -> float | None:
        """Sequences the replica runs at once (configured or learned); None if unknown."""

    def measured_rtt_ms(self, region: str) -> float | None:
        """Round trip from this router to `region`, measured lately; None if not."""

    def client_observed(self, backend: Backend) -> Observed:
        """Client-observed first-byte times of the backend and of its region, recent."""

    @property
    def router_region(self) -> str | None:
        """The region this router runs in (where its RTT measurements start)."""


@dataclass(frozen=True)
class ScoreParts:
    rtt_ms: float
    ttft_ms: float
    queue_ms: float
    slot_wait_ms: float
    kv_penalty_ms: float
    affinity_bonus_ms: float
    cost_ms: float
    outstanding: float
    capacity: float | None
    rtt_source: str  # "measured" or "matrix"
    load_source: str  # "prometheus+inflight" or "inflight-only"
    engine_ttft_ms: float | None = None  # the engine's own (Prometheus)
    observed_ttft_ms: float | None = None  # client-observed minus the router's RTT
    observed_region_ttft_ms: float | None = None  # the same for the region's fastest pool
    observed_pool_ttft_ms: float | None = None  # the same for the replica's pool
    observed_samples: int = 0
    ttft_source: str = "default"  # "engine", "passive", "observed" or "default"
    cost_per_mtok: float = 0.0  # the backend's cost (USD per million tokens), unweighted
    cost_source: str = "static"  # live, floored, capped, list, unpriced, none, static

    @property
    def predicted_ttft_ms(self) -> float:
        return self.rtt_ms + self.ttft_ms + self.queue_ms + self.slot_wait_ms + self.kv_penalty_ms

    @property
    def score(self) -> float:
        return self.predicted_ttft_ms - self.affinity_bonus_ms + self.cost_ms

    def as_dict(self) -> dict[str, float | str | None]:
        out: dict[str, float | str | None] = {
            k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()
        }
        out["predicted_ttft_ms"] = round(self.predicted_ttft_ms, 3)
        out["score"] = round(self.score, 3)
        return out


def rtt_to(
    backend: Backend, client_region: str | None, fleet: Fleet, view: LoadView, cfg: ScoringConfig
) -> tuple[float, str]:
    """RTT from the client's region to the backend's, and where the figure comes from."""
    if backend.region and client_region in (None, view.router_region):
        measured = view.measured_rtt_ms(backend.region)
        if measured is not None:
            return measured, "measured"
    return fleet.rtt.rtt_ms(client_region or view.router_region, backend.region, cfg), "matrix"


def blended_outstanding(
    backend: Backend, view: LoadView, sample: LoadSample | None, inflight: int
) -> float:
    """Requests running or waiting at the backend: the snapshot's running + waiting plus
    what this router added or finished since it was taken, never less than this router's
    own in flight there (`inflight`); this router's alone without a fresh snapshot."""
    if sample is None:
        return float(inflight)
    delta = inflight - view.inflight_at_snapshot(backend.id)
    return max(float(inflight), sample.waiting + sample.running + delta)


def predict(
    backend: Backend,
    client_region: str | None,
    fleet: Fleet,
    view: LoadView,
    cfg: ScoringConfig,
    *,
    affinity_bonus_ms: float = 0.0,
) -> ScoreParts:
    rtt, rtt_source = rtt_to(backend, client_region, fleet, view, cfg)
    inflight = view.inflight(backend.id)
    sample = view.sample(backend)
    observed = view.observed_ttft_ms(backend.id)
    passive_ttft = max(observed - rtt, 0.0) if observed is not None else None
    seen = view.client_observed(backend)
    own_rtt, _ = rtt_to(backend, view.router_region, fleet, view, cfg)  # router -> backend
    seen_replica = max(seen.replica_ms - own_rtt, 0.0) if seen.replica_ms is not None else None
    seen_region = max(seen.region_ms - own_rtt, 0.0) if seen.region_ms is not None else None
    seen_pool = max(seen.pool_ms - own_rtt, 0.0) if seen.pool_ms is not None else None
    kv_penalty = 0.0
    ttft: float | None
    reflected = 0.0  # requests whose slowing effect the base TTFT already includes
    if sample is not None:
        outstanding = blended_outstanding(backend, view, sample, inflight)
        waiting = sample.waiting
        if sample.ttft_ms is not None:
            ttft, reflected = sample.ttft_ms, sample.running
        else:
            ttft = passive_ttft
        if sample.kv_usage is not None and sample.kv_usage > cfg.kv_knee:
            kv_penalty = cfg.kv_penalty_ms * (sample.kv_usage - cfg.kv_knee) / (1 - cfg.kv_knee)
        source = "prometheus+inflight"
    else:
        outstanding, waiting, ttft, source = float(inflight), 0.0, passive_ttft, "inflight-only"
    if sample is not None and sample.ttft_ms is not None:
        ttft_source = "engine"
    else:
        ttft_source = "passive" if ttft is not None else "default"
    base = ttft if ttft is not None else cfg.default_ttft_ms
    by_region = seen_region if seen.pool_samples == 0 else None
    client = next((ms for ms in (seen_replica, seen_pool, by_region) if ms is not None), None)
    if client is not None and client > base * (1 + cfg.observed_wins_ratio) + (
        cfg.observed_wins_margin_ms
    ):
        base, ttft_source = client, "observed"
    capacity = view.capacity(backend)
    slot_wait = 0.0
    if capacity is not None and capacity > 0:
        in_batch = min(outstanding, capacity)
        queue = max(0.0, in_batch - min(reflected, capacity)) * cfg.per_outstanding_ms
        hold = view.observed_duration_ms(backend.id)
        hold = hold if hold is not None else cfg.default_hold_ms
        busy = in_batch / capacity
        slot_wait = (max(0.0, outstanding + 1 - capacity) + busy**capacity) * hold / capacity
    else:
        queue = (
            max(0.0, outstanding - reflected) * cfg.per_outstanding_ms
            + waiting * cfg.waiting_factor * base
        )
    return ScoreParts(
        rtt_ms=rtt,
        ttft_ms=base,
        queue_ms=queue,
        slot_wait_ms=slot_wait,
        kv_penalty_ms=kv_penalty,
        affinity_bonus_ms=affinity_bonus_ms,
        cost_ms=cfg.cost_weight_ms * backend.cost,
        outstanding=outstanding,
        capacity=capacity,
        rtt_source=rtt_source,
        load_source=source,
        engine_ttft_ms=sample.ttft_ms if sample is not None else None,
        observed_ttft_ms=seen_replica,
        observed_region_ttft_ms=seen_region,
        observed_pool_ttft_ms=seen_pool,
        observed_samples=seen.samples,
        ttft_source=ttft_source,
        cost_per_mtok=backend.cost,
        cost_source=backend.cost_source,
    )
