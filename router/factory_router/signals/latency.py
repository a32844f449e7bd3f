"""Client-observed latency: what this router's clients wait for, per replica and per region.

The sample is the time from sending a request to its first body byte, as the router sees
it, minus the time the request waited inside the router for a connection (a pool wait is
the router's, never the backend's). Only streamed answers are samples: their first byte
is the first token, while a non-streamed answer arrives whole, after the generation, and
says nothing about the time to first token. Failed attempts are not samples either; they
are the error-based ejector's.

The estimate of a key (a replica, or a region's replicas of one model) is the median of
its last `max_samples` samples no older than `window_seconds`, and only with at least
`min_samples` of them:
- recent: a brownout shows after `max_samples // 2 + 1` slow answers, seconds at most;
- robust: one long prefill (or a GC pause) among them does not move a median;
- it ends: with no recent samples there is no estimate, and the engine's own figure is
  used again (the policy probes a replica it avoids, so this is rare).
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from factory_router.policy.fleet import Backend
from factory_router.policy.scoring import Observed

_MAX_KEYS = 4096  # backends and regions come and go; keep the tables bounded
_K = TypeVar("_K", str, tuple[str, str])


class _Window:
    __slots__ = ("samples",)

    def __init__(self, max_samples: int) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)


class ObservedLatency:
    """Windowed medians of client-observed first-byte times; the clock is injected."""

    def __init__(
        self,
        window_seconds: float,
        max_samples: int,
        min_samples: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= min_samples <= max_samples:
            raise ValueError("need 1 <= min_samples <= max_samples")
        self.window = window_seconds
        self.max_samples = max_samples
        self.min_samples = min_samples
        self._clock = clock
        self._replicas: dict[str, _Window] = {}
        self._regions: dict[tuple[str, str], _Window] = {}

    def observe(self, backend: Backend, ms: float) -> None:
        now = self._clock()
        self._add(self._replicas, backend.id, now, ms)
        if backend.region:
            self._add(self._regions, (backend.region, backend.model), now, ms)

    def replica_ms(self, backend_id: str) -> float | None:
        return self._estimate(self._replicas.get(backend_id))

    def region_ms(self, region: str, model: str) -> float | None:
        return self._estimate(self._regions.get((region, model)))

    def of(self, backend: Backend) -> Observed:
        region = self.region_ms(backend.region, backend.model) if backend.region else None
        window = self._replicas.get(backend.id)
        return Observed(
            replica_ms=self._estimate(window),
            region_ms=region,
            samples=self._recent(window),
        )

    def _add(self, table: dict[_K, _Window], key: _K, now: float, ms: float) -> None:
        window = table.get(key)
        if window is None:
            if len(table) >= _MAX_KEYS:
                table.clear()
            window = table[key] = _Window(self.max_samples)
        window.samples.append((now, ms))

    def _recent(self, window: _Window | None) -> int:
        if window is None:
            return 0
        horizon = self._clock() - self.window
        return sum(1 for at, _ in window.samples if at >= horizon)

    def _estimate(self, window: _Window | None) -> float | None:
        if window is None:
            return None
        horizon = self._clock() - self.window
        recent = [ms for at, ms in window.samples if at >= horizon]
        if len(recent) < self.min_samples:
            return None
        return statistics.median(recent)
