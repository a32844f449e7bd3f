"""Client-observed latency: what this router's clients wait for, per replica and per region.

The sample is the time from sending a request to its first body byte, as the router sees
it, minus the time the request waited inside the router for a connection (a pool wait is
the router's, never the backend's). Only streamed answers are samples: their first byte
is the first token, while a non-streamed answer arrives whole, after the generation, and
says nothing about the time to first token. Failed attempts are not samples either; they
are the error-based ejector's.

The estimate of a key (a replica, or a pool's replicas of one model) is the median of
its last `max_samples` samples no older than `window_seconds`, and only with at least
`min_samples` of them; unless its last `recent_samples` samples are all below that, then
the slowest of those:
- quick to see a brownout: `max_samples // 2 + 1` slow answers in a row, under a second
  at a few requests a second;
- quick to see a recovery: `recent_samples` fast answers in a row, the few probes that a
  replica the policy avoids still gets (`policy.health`);
- robust: one long prefill (or a GC pause) moves neither a median nor "all of the last";
- it ends: with no recent samples there is no estimate, and the engine's own figure is
  used again.

A pool's figure pools its replicas' samples: they share what can stall in front of an
engine (a sidecar, an image, a node type, a Service). A region's figure (of one model) is
that of its *fastest* pool: a region is slow in front only when every pool measured there
is, since its pools share only the path. The first version pooled the
region's samples, and in the fleet bench's eu-central-1 H100 brownout the router in
ap-south-1, whose Llama traffic had mostly gone to that pool, charged its 419 ms to the
healthy Inferentia2 replicas beside it (scores 543-583 ms instead of about 150).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from factory_router.policy.fleet import Backend
from factory_router.policy.scoring import Observed

_MAX_KEYS = 4096  # backends and regions come and go; keep the tables bounded
_K = TypeVar("_K", str, tuple[str, str])


class _Window:
    """One key's last samples, and its estimate cached until a sample arrives or leaves
    the window (the policy reads every candidate's on every request)."""

    __slots__ = ("cached", "samples", "valid_until")

    def __init__(self, max_samples: int) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self.cached: tuple[float | None, int] = (None, 0)
        self.valid_until = -math.inf


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


class ObservedLatency:
    """Windowed medians of client-observed first-byte times; the clock is injected."""

    def __init__(
        self,
        window_seconds: float,
        max_samples: int,
        min_samples: int,
        clock: Callable[[], float] = time.monotonic,
        recent_samples: int = 2,
    ) -> None:
        if not 1 <= min_samples <= max_samples or not 1 <= recent_samples <= max_samples:
            raise ValueError("need 1 <= min_samples, recent_samples <= max_samples")
        self.window = window_seconds
        self.max_samples = max_samples
        self.min_samples = min_samples
        self.recent_samples = recent_samples
        self._clock = clock
        self._replicas: dict[str, _Window] = {}
        self._pools: dict[tuple[str, str], _Window] = {}  # (pool, model)
        self._region_pools: dict[tuple[str, str], set[tuple[str, str]]] = {}  # (region, model)

    def observe(self, backend: Backend, ms: float) -> None:
        now = self._clock()
        self._add(self._replicas, backend.id, now, ms)
        pool = (backend.pool, backend.model)
        self._add(self._pools, pool, now, ms)
        if backend.region:
            region = (backend.region, backend.model)
            if region not in self._region_pools and len(self._region_pools) >= _MAX_KEYS:
                self._region_pools.clear()
            self._region_pools.setdefault(region, set()).add(pool)

    def replica_ms(self, backend_id: str) -> float | None:
        return self._read(self._replicas.get(backend_id), self._clock())[0]

    def pool_ms(self, pool: str, model: str) -> float | None:
        return self._read(self._pools.get((pool, model)), self._clock())[0]

    def region_ms(self, region: str, model: str) -> float | None:
        """The fastest of the region's pools of the model (see above): their estimates,
        and the median of a pool's few recent samples when it has no estimate yet (it can
        only lower the figure: a fast answer anywhere says the path is not slow, while a
        slow one needs a whole estimate); None without any estimate."""
        now = self._clock()
        estimates: list[float] = []
        loose: list[float] = []
        for key in self._region_pools.get((region, model), ()):
            window = self._pools.get(key)
            estimate, count = self._read(window, now)
            if estimate is not None:
                estimates.append(estimate)
            elif count and window is not None:
                horizon = now - self.window
                loose.append(_median([ms for at, ms in window.samples if at >= horizon]))
        return min(estimates + loose) if estimates else None

    def of(self, backend: Backend) -> Observed:
        now = self._clock()
        replica, samples = self._read(self._replicas.get(backend.id), now)
        pool, pool_samples = self._read(self._pools.get((backend.pool, backend.model)), now)
        region = self.region_ms(backend.region, backend.model) if backend.region else None
        return Observed(replica_ms=replica, pool_ms=pool, region_ms=region, samples=samples,
                        pool_samples=pool_samples)  # fmt: skip

    def _add(self, table: dict[_K, _Window], key: _K, now: float, ms: float) -> None:
        window = table.get(key)
        if window is None:
            if len(table) >= _MAX_KEYS:
                table.clear()
            window = table[key] = _Window(self.max_samples)
        window.samples.append((now, ms))
        window.valid_until = -math.inf

    def _read(self, window: _Window | None, now: float) -> tuple[float | None, int]:
        """(estimate, recent samples) of one key."""
        if window is None:
            return None, 0
        if now < window.valid_until:
            return window.cached
        horizon = now - self.window
        recent = [(at, ms) for at, ms in window.samples if at >= horizon]
        values = [ms for _, ms in recent]
        estimate = None
        if len(values) >= self.min_samples:
            estimate = min(_median(values), max(values[-self.recent_samples :]))
        window.cached = (estimate, len(values))
        window.valid_until = recent[0][0] + self.window if recent else math.inf
        return window.cached
