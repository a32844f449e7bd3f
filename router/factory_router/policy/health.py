"""Retry budget and outlier ejection: two small state machines, time passed in.

RetryBudget (Finagle-style): every request deposits `ratio` tokens, every retry withdraws
one, and `min_per_second * window` retries are always allowed, so that a fleet-wide outage
cannot multiply the load by `max_attempts`.

Ejection, per endpoint:

    healthy --(N consecutive failures)--> ejected(until = now + base * 2**(k-1))
    ejected --(time passes)--> probation            (k = ejections in a row)
    probation --(success)--> healthy (k decays by one per success after probation)
    probation --(one failure)--> ejected (k + 1: the backoff grows, capped at max)

LatencyEjector, per subject (a replica, or a region's replicas of one model), in the manner
of Envoy's outlier detection but on the latency clients observe (`signals.latency`),
compared with the subject's peers (the other replicas of its pool among the request's
candidates; the other regions serving the model):

    fine --(figure > max(ratio * peers, peers + margin))--> degraded(until = now + backoff)
    degraded --(figure <= max((1+ratio)/2 * peers, peers + margin/2))--> fine  (early)
    degraded --(time passes)--> fine, re-judged at once (k + 1 if still an outlier)
    k (degradations in a row) goes back to 0 after `max_seconds` without one

A degraded subject is not removed (a slow answer beats none): it is ranked after every
other candidate, and probe requests are sent to it anyway, so that its figure follows a
recovery: every routed request earns `probe_share` of a probe (credit capped at one), and
a backend gets at most one per `probe_interval_seconds`. Probes are client requests, so
they cost those clients the brownout; the share bounds that cost (1%: p99 is spared
unless the brownout is long). Only first bytes that arrived are latency samples: a
failed attempt is the error-based Ejector's, and the router's own waits (pool, timeouts)
are never a backend's latency.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from factory_router.policy.config import EjectionConfig, LatencyEjectionConfig, RetryBudgetConfig


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


@dataclass
class _Degraded:
    degradations: int = 0  # in a row; drives the backoff
    until: float = -math.inf
    reason: str = ""


class LatencyEjector:
    """Latency-outlier state of every subject, and when each backend was last probed."""

    def __init__(self, cfg: LatencyEjectionConfig) -> None:
        self.cfg = cfg
        self._state: dict[str, _Degraded] = {}
        self._probed_at: dict[str, float] = {}
        self._credit = 1.0  # probes that may be sent now; the first suspect is probed at once

    def bound(self, peers_ms: float, scale: float = 1.0) -> float:
        """The figure above which a subject is an outlier (scale 1) or, once degraded,
        below which it has recovered (scale 0.5: hysteresis, no flapping at the edge)."""
        cfg = self.cfg
        return max(
            peers_ms * (1 + (cfg.outlier_ratio - 1) * scale),
            peers_ms + cfg.outlier_margin_ms * scale,
        )

    def judge(self, subject: str, figure: float | None, peers: float | None, now: float) -> None:
        """Update one subject from its figure and its peers' (None: no evidence, no change;
        a degradation then ends when its time is up)."""
        st = self._state.get(subject)
        if st is not None and now - st.until > self.cfg.max_seconds:
            del self._state[subject]  # long quiet: the backoff starts over
            st = None
        if figure is None or peers is None:
            return
        if st is not None and st.until > now:
            if figure <= self.bound(peers, 0.5):
                st.until = now  # recovered, seen by the probes
            return
        if figure > self.bound(peers):
            st = self._state.setdefault(subject, _Degraded())
            st.degradations += 1
            backoff = self.cfg.base_seconds * 2 ** (st.degradations - 1)
            st.until = now + min(backoff, self.cfg.max_seconds)
            st.reason = f"latency {figure:.0f}ms, peers {peers:.0f}ms"

    def degraded(self, subject: str, now: float) -> bool:
        st = self._state.get(subject)
        return st is not None and st.until > now

    def describe(self, subject: str, now: float) -> str | None:
        """Why and until when the subject is degraded; None when it is not."""
        st = self._state.get(subject)
        if st is None or st.until <= now:
            return None
        return f"{st.reason}, degraded until t={st.until:.1f}"

    def earn(self) -> None:
        """One request routed: `probe_share` more of a probe."""
        self._credit = min(1.0, self._credit + self.cfg.probe_share)

    def probe_due(self, backend_id: str, now: float) -> bool:
        if self._credit < 1.0 - 1e-9:  # a share such as 0.01 adds up to 0.9999...
            return False
        last = self._probed_at.get(backend_id)
        return last is None or now - last >= self.cfg.probe_interval_seconds

    def probed(self, backend_id: str, now: float) -> None:
        self._probed_at[backend_id] = now
        self._credit -= 1.0

    def forget(self, keep: set[str]) -> None:
        """Drop state of replicas that left the fleet (region subjects are few; kept)."""
        for table in (self._state, self._probed_at):
            for key in list(table):
                if key not in keep and not key.startswith("region:"):
                    del table[key]
