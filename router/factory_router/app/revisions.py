"""Per-revision series: what clients saw of each revision of each pool, which the operator's
rollout gates compare, canary against stable (docs/rollouts.md).

Names and labels are the contract's (`factory_contract.metrics`): `namespace`, `factory`,
`pool` (the pool's own name, `status.pools[].name`), `revision` (its pods' label):

- `factory_router_backend_attempts_total{..., outcome}`: every upstream attempt, `ok` or
  `error` (no connection, no first byte in time, a refusal the router fails over from:
  5xx, 429, 404, 401, 403, a redirect or a malformed head; a 5xx relayed; a body broken or
  stalled mid-way). An attempt the router's own connection slots refused is not counted
  (the backend did nothing); a client that leaves mid-answer is `ok`.
- `factory_router_backend_ttft_seconds`: request sent -> first body byte of a streamed (SSE)
  2xx answer, the wait for the router's own connection slot excluded (a non-streamed
  answer arrives whole: its first byte is its last token, as `signals.latency` reads it).
- `factory_router_backend_itl_seconds`: the gaps between successive content events of a
  stream, as the router reads them (a read that brings n events after a gap g counts n gaps
  of g / n; the events of the first read count as gaps of 0 after the first).
- `factory_router_backend_completion_tokens_total` and
  `factory_router_backend_stream_seconds_total`: of each streamed 2xx answer, its
  completion tokens (the engine's usage, else the estimate of a stream cut short) and the
  time from its first to its last body byte. Only streams: their ratio is the decode
  throughput (a non-streamed answer's tokens were all made before its first byte).

Not recorded: an admin's targeted request (`x-factory-target`: the operator's golden prompts,
which are no client's and would count towards a step's minRequests); backends reached
through a region's `spec.endpoint` (the router there records
its own, with the revisions; counting them here too would count twice and add the
cross-region round trip). A backend without a revision (a static backend without
`revision`) is recorded with `revision=""`.

Cardinality: one set of series (8 samples + buckets) per namespace, factory, pool and
revision that the fleet's backends have: one revision per pool, two during a rollout.
The series of a revision gone from the fleet are removed `RETENTION_SECONDS` after it went,
at a fleet change (a counter that vanishes and comes back reads as a reset to Prometheus);
an attempt in flight then counts into a series no longer exported.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram

from factory_contract import metrics as contract
from factory_router.metering.usage import Usage
from factory_router.policy.fleet import Backend, Fleet

RETENTION_SECONDS = 600.0  # a revision gone from the fleet: scraped a few times more
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1)

Labels = tuple[str, str, str, str]  # namespace, factory, pool, revision


def revision_labels(backend: Backend) -> Labels | None:
    """The series labels of a backend; None when it is not recorded."""
    if backend.via_endpoint:
        return None
    return (
        backend.namespace or "",
        backend.factory or "",
        backend.bare_pool,
        backend.revision or "",
    )


class RevisionSeries:
    """The children of one revision's series (looked up once per attempt)."""

    __slots__ = ("error", "itl", "ok", "stream_seconds", "tokens", "ttft")

    def __init__(self, owner: RevisionMetrics, labels: Labels) -> None:
        self.ok = owner.attempts.labels(*labels, "ok")
        self.error = owner.attempts.labels(*labels, "error")
        self.ttft = owner.ttft.labels(*labels)
        self.itl = owner.itl.labels(*labels)
        self.tokens = owner.tokens.labels(*labels)
        self.stream_seconds = owner.stream_seconds.labels(*labels)

    def attempt(self, ok: bool) -> None:
        (self.ok if ok else self.error).inc()


class StreamClock:
    """One streamed answer's timing: first and last body byte, the gaps between content
    events (`chunk` per read: one clock read and two comparisons)."""

    __slots__ = ("_events", "_last_event", "first", "last", "series")

    def __init__(self, series: RevisionSeries, first: float, events: int) -> None:
        self.series = series
        self.first = self.last = first
        self._events = 0
        self._last_event: float | None = None
        self.chunk(events, first)

    def chunk(self, events: int, now: float | None = None) -> None:
        """A read was relayed; `events`: the stream's content events so far."""
        now = time.perf_counter() if now is None else now
        self.last = now
        new = events - self._events
        if new <= 0:
            return
        itl = self.series.itl
        if self._last_event is None:
            for _ in range(new - 1):
                itl.observe(0.0)
        else:
            gap = (now - self._last_event) / new
            for _ in range(new):
                itl.observe(gap)
        self._events = events
        self._last_event = now

    def finish(self, usage: Usage | None) -> None:
        """The answer ended (or its client left): its tokens and its duration."""
        if usage is None:
            return  # unknown usage: neither figure, so that their ratio stays true
        if usage.completion_tokens:
            self.series.tokens.inc(usage.completion_tokens)
        self.series.stream_seconds.inc(self.last - self.first)


class RevisionMetrics:
    """The per-revision series of one router instance (its registry)."""

    def __init__(
        self, registry: CollectorRegistry, retention_seconds: float = RETENTION_SECONDS
    ) -> None:
        labels = contract.REVISION_SERIES_LABELS
        self.retention_seconds = retention_seconds
        self.attempts = Counter(
            contract.BACKEND_ATTEMPTS.removesuffix("_total"),
            "Upstream attempts by pool revision and outcome (ok, error).",
            [*labels, "outcome"],
            registry=registry,
        )
        self.ttft = Histogram(
            contract.BACKEND_TTFT_SECONDS,
            "Request sent -> first body byte of streamed answers, by pool revision.",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            contract.BACKEND_ITL_SECONDS,
            "Gaps between successive content events of streamed answers, by pool revision.",
            labels,
            buckets=_ITL_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            contract.BACKEND_COMPLETION_TOKENS.removesuffix("_total"),
            "Completion tokens of streamed answers, by pool revision.",
            labels,
            registry=registry,
        )
        self.stream_seconds = Counter(
            contract.BACKEND_STREAM_SECONDS.removesuffix("_total"),
            "First to last body byte of streamed answers, by pool revision.",
            labels,
            registry=registry,
        )
        self._series: dict[Labels, RevisionSeries] = {}
        self._gone: dict[Labels, float] = {}  # labels -> when its revision left the fleet

    def series(self, backend: Backend) -> RevisionSeries | None:
        labels = revision_labels(backend)
        if labels is None:
            return None
        found = self._series.get(labels)
        if found is None:
            found = self._series[labels] = RevisionSeries(self, labels)
        return found

    def prune(self, fleet: Fleet, now: float) -> None:
        """At a fleet change: forget the series of revisions gone for the retention."""
        if not self._series:
            return
        live = {revision_labels(b) for b in fleet.backends}
        for labels in list(self._series):
            if labels in live:
                self._gone.pop(labels, None)
                continue
            since = self._gone.setdefault(labels, now)
            if now - since < self.retention_seconds:
                continue
            del self._series[labels], self._gone[labels]
            for outcome in ("ok", "error"):
                self.attempts.remove(*labels, outcome)
            for metric in (self.ttft, self.itl, self.tokens, self.stream_seconds):
                metric.remove(*labels)
