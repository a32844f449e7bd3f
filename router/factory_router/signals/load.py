"""`LoadState`: the snapshot, the passive signals and the measured RTTs behind the policy's
`LoadView`.

Batch capacity of a replica (how many sequences it runs at once) comes from discovery
(`--max-num-seqs`) when known; otherwise it is learned from the snapshots: a replica that
had requests waiting in two snapshots in a row is full at the `running` count seen then
(whether the limit is the sequence count or the KV cache). One snapshot is not enough: a
request that just arrived waits for the next scheduler step even in an idle engine, and a
capacity of 1 learned from that would starve the replica. A replica seen running more than
its learned capacity raises it.

Client-observed latency (`signals.latency`) is kept beside the engine's own figures: the
policy compares the two (`policy.scoring`) and finds latency outliers (`policy.health`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from factory_router.policy.config import ScoringConfig
from factory_router.policy.fleet import Backend
from factory_router.policy.scoring import LoadSample, Observed
from factory_router.signals.latency import ObservedLatency
from factory_router.signals.passive import PassiveSignals
from factory_router.signals.prometheus import Snapshot
from factory_router.signals.rtt import RttEstimates


class LoadState:
    def __init__(
        self,
        stale_after: float,
        passive: PassiveSignals | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        router_region: str | None = None,
        rtt_window_seconds: float = ScoringConfig.rtt_window_seconds,
        scoring: ScoringConfig | None = None,
    ) -> None:
        cfg = scoring or ScoringConfig()
        self.stale_after = stale_after
        self.passive = passive or PassiveSignals()
        self.snapshot: Snapshot | None = None
        self.router_region = router_region
        self.rtt = RttEstimates(rtt_window_seconds, clock)
        self.observed = ObservedLatency(
            cfg.observed_window_seconds,
            cfg.observed_max_samples,
            cfg.observed_min_samples,
            clock,
            cfg.observed_recent_samples,
        )
        self._learned_capacity: dict[str, float] = {}  # pod -> running while others waited
        self._clock = clock

    def install(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot, remembering this router's in-flight counts now."""
        previous = self.snapshot
        self.snapshot = replace(snapshot, inflight_at=self.passive.inflight_copy())
        for pod, sample in snapshot.by_pod.items():
            before = previous.by_pod.get(pod) if previous is not None else None
            learned = self._learned_capacity.get(pod)
            if sample.waiting >= 1 and sample.running >= 1 and before and before.waiting >= 1:
                self._learned_capacity[pod] = max(sample.running, before.running)
            elif learned is not None and sample.running > learned:
                self._learned_capacity[pod] = sample.running

    def age(self) -> float | None:
        """Seconds since the last good snapshot; None when there never was one."""
        return None if self.snapshot is None else self._clock() - self.snapshot.taken_at

    def fresh(self) -> bool:
        age = self.age()
        return age is not None and age <= self.stale_after

    # Passive observations (called by the proxy)
    def observe_first_byte(
        self, backend: Backend, ttfb_ms: float, *, streamed: bool, router_wait_ms: float = 0.0
    ) -> None:
        """A first byte arrived `ttfb_ms` after the request was handed to the upstream
        client, `router_wait_ms` of which it waited inside the router for a connection
        (not the backend's doing, so not counted against it)."""
        ms = max(ttfb_ms - router_wait_ms, 0.0)
        self.passive.observe_ttft(backend.id, ms)
        if backend.region:
            self.rtt.observe(backend.region, ms)
        if streamed:
            self.observed.observe(backend, ms)

    def observe_completion(
        self, backend: Backend, *, duration_ms: float, ttfb_ms: float, streamed: bool
    ) -> None:
        """A request that ended well: how long it held a batch slot. For a stream that is
        from the first byte to the end (queueing before admission excluded); a non-streamed
        answer arrives whole, so its whole duration is the only measure there is."""
        held = duration_ms - ttfb_ms if streamed else duration_ms
        self.passive.observe_duration(backend.id, held)

    # LoadView
    def sample(self, backend: Backend) -> LoadSample | None:
        snap = self.snapshot
        if snap is None or not self.fresh():
            return None
        if backend.pod and backend.pod in snap.by_pod:
            return snap.by_pod[backend.pod]
        return snap.by_pool.get((backend.pool, backend.region or ""))

    def inflight(self, backend_id: str) -> int:
        return self.passive.inflight(backend_id)

    def inflight_at_snapshot(self, backend_id: str) -> int:
        snap = self.snapshot
        return snap.inflight_at.get(backend_id, 0) if snap else 0

    def observed_ttft_ms(self, backend_id: str) -> float | None:
        return self.passive.observed_ttft_ms(backend_id)

    def observed_duration_ms(self, backend_id: str) -> float | None:
        return self.passive.observed_duration_ms(backend_id)

    def capacity(self, backend: Backend) -> float | None:
        if backend.max_num_seqs is not None:
            return float(backend.max_num_seqs)
        return self._learned_capacity.get(backend.pod) if backend.pod else None

    def measured_rtt_ms(self, region: str) -> float | None:
        return self.rtt.rtt_ms(region)

    def client_observed(self, backend: Backend) -> Observed:
        return self.observed.of(backend)
