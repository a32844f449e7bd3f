"""Measured round-trip times from this router to each backend region.

Two sources, both upper bounds of the true network RTT:
- active probes: `GET /health` on one endpoint per region, every few seconds (the engine
  answers at once, so the time is the round trip plus a little server work);
- passive observation: every request's time to first byte (round trip plus the engine's
  queueing and prefill).

The estimate of a region is the minimum over the recent samples of both (a windowed-min
filter, as TCP's and BBR's min-RTT estimators do): the tightest upper bound seen lately,
which follows a real change of the path within the window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RttEstimates:
    def __init__(self, window_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window_seconds
        self._clock = clock
        self._samples: dict[str, deque[tuple[float, float]]] = {}

    def observe(self, region: str, ms: float) -> None:
        """One sample (probe or time to first byte) from this router to `region`."""
        now = self._clock()
        samples = self._samples.setdefault(region, deque())
        # Monotonic deque: a new sample retires older, larger ones (they can never be the
        # minimum again), so the front is always the window's minimum.
        while samples and samples[-1][1] >= ms:
            samples.pop()
        samples.append((now, ms))
        self._expire(samples, now)

    def rtt_ms(self, region: str) -> float | None:
        """The windowed minimum for `region`; None when nothing recent was measured."""
        samples = self._samples.get(region)
        if not samples:
            return None
        self._expire(samples, self._clock())
        return samples[0][1] if samples else None

    def regions(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for region in list(self._samples):
            ms = self.rtt_ms(region)
            if ms is not None:
                out[region] = ms
        return out

    def _expire(self, samples: deque[tuple[float, float]], now: float) -> None:
        while samples and now - samples[0][0] > self.window:
            samples.popleft()
