"""Retry budget and outlier ejection: two small state machines, time passed in.

RetryBudget (Finagle-style): every request deposits `ratio` tokens, every retry withdraws
one, and `min_per_second * window` retries are always allowed, so that a fleet-wide outage
cannot multiply the load by `max_attempts`.

Ejection, per endpoint:

    healthy --(N consecutive failures)--> ejected(until = now + base * 2**(k-1))
    ejected --(time passes)--> probation            (k = ejections in a row)
    probation --(success)--> healthy (k decays by one per success after probation)
    probation --(one failure)--> ejected (k + 1: the backoff grows, capped at max)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from factory_router.policy.config import EjectionConfig, RetryBudgetConfig


class RetryBudget:
    def __init__(self, cfg: RetryBudgetConfig) -> None:
        self._cfg = cfg
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        horizon = now - self._cfg.window_seconds
        for q in (self._requests, self._retries):
            while q and q[0] < horizon:
                q.popleft()

    def record_request(self, now: float) -> None:
        self._trim(now)
        self._requests.append(now)

    def try_withdraw(self, now: float) -> bool:
        """True (and the retry is counted) if a retry is allowed now."""
        self._trim(now)
        allowed = (
            self._cfg.ratio * len(self._requests)
            + self._cfg.min_per_second * self._cfg.window_seconds
        )
        if len(self._retries) + 1 > allowed:
            return False
        self._retries.append(now)
        return True


@dataclass
class _EndpointHealth:
    consecutive_failures: int = 0
    ejections: int = 0  # in a row; drives the backoff
    ejected_until: float = 0.0
    on_probation: bool = False


class Ejector:
    """Ejection state of every endpoint, keyed by backend id."""

    def __init__(self, cfg: EjectionConfig) -> None:
        self._cfg = cfg
        self._state: dict[str, _EndpointHealth] = {}

    def is_ejected(self, backend_id: str, now: float) -> bool:
        st = self._state.get(backend_id)
        return st is not None and st.ejected_until > now

    def ejected_until(self, backend_id: str) -> float:
        st = self._state.get(backend_id)
        return st.ejected_until if st else 0.0

    def record_success(self, backend_id: str) -> None:
        st = self._state.get(backend_id)
        if st is None:
            return
        st.consecutive_failures = 0
        st.on_probation = False
        st.ejections = max(0, st.ejections - 1)
        if st.ejections == 0:
            del self._state[backend_id]

    def record_failure(self, backend_id: str, now: float) -> bool:
        """Count a failure; True when it ejects the endpoint now."""
        st = self._state.setdefault(backend_id, _EndpointHealth())
        if st.ejected_until > now:
            return False  # already out (a request that started before the ejection)
        if st.ejections and st.ejected_until <= now:
            st.on_probation = True
        st.consecutive_failures += 1
        if st.on_probation or st.consecutive_failures >= self._cfg.consecutive_failures:
            st.ejections += 1
            backoff = min(self._cfg.base_seconds * 2 ** (st.ejections - 1), self._cfg.max_seconds)
            st.ejected_until = now + backoff
            st.consecutive_failures = 0
            st.on_probation = False
            return True
        return False

    def forget(self, keep: set[str]) -> None:
        """Drop state of endpoints that left the fleet."""
        for key in list(self._state):
            if key not in keep:
                del self._state[key]
