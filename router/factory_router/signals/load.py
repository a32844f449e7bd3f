"""`LoadState`: the snapshot and the passive signals behind the policy's `LoadView`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from factory_router.policy.fleet import Backend
from factory_router.policy.scoring import LoadSample
from factory_router.signals.passive import PassiveSignals
from factory_router.signals.prometheus import Snapshot


class LoadState:
    def __init__(
        self,
        stale_after: float,
        passive: PassiveSignals | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after = stale_after
        self.passive = passive or PassiveSignals()
        self.snapshot: Snapshot | None = None
        self._clock = clock

    def install(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot, remembering this router's in-flight counts now."""
        self.snapshot = replace(snapshot, inflight_at=self.passive.inflight_copy())

    def age(self) -> float | None:
        """Seconds since the last good snapshot; None when there never was one."""
        return None if self.snapshot is None else self._clock() - self.snapshot.taken_at

    def fresh(self) -> bool:
        age = self.age()
        return age is not None and age <= self.stale_after

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
