"""Passive signals: what this router sees itself, whatever Prometheus says.

In-flight counts per backend (increment when a request is sent, decrement when its
response ends, however it ends), and EWMAs of the observed time to first byte and of the
whole request's duration (how long a request holds one of the engine's batch slots).
"""

from __future__ import annotations

from collections import defaultdict


class PassiveSignals:
    def __init__(self, ewma_alpha: float = 0.2) -> None:
        self._alpha = ewma_alpha
        self._inflight: defaultdict[str, int] = defaultdict(int)
        self._ttft_ms: dict[str, float] = {}
        self._duration_ms: dict[str, float] = {}

    def start(self, backend_id: str) -> None:
        self._inflight[backend_id] += 1

    def finish(self, backend_id: str) -> None:
        left = self._inflight[backend_id] - 1
        if left <= 0:
            self._inflight.pop(backend_id, None)
        else:
            self._inflight[backend_id] = left

    def inflight(self, backend_id: str) -> int:
        return self._inflight.get(backend_id, 0)

    def inflight_copy(self) -> dict[str, int]:
        return dict(self._inflight)

    @property
    def total_inflight(self) -> int:
        return sum(self._inflight.values())

    def observe_ttft(self, backend_id: str, ms: float) -> None:
        self._ewma(self._ttft_ms, backend_id, ms)

    def observed_ttft_ms(self, backend_id: str) -> float | None:
        return self._ttft_ms.get(backend_id)

    def observe_duration(self, backend_id: str, ms: float) -> None:
        self._ewma(self._duration_ms, backend_id, ms)

    def observed_duration_ms(self, backend_id: str) -> float | None:
        return self._duration_ms.get(backend_id)

    def _ewma(self, table: dict[str, float], key: str, value: float) -> None:
        prev = table.get(key)
        table[key] = value if prev is None else prev + self._alpha * (value - prev)
