"""The routing decision: residency filter, health filter, ranking, and its explanation.

    plan() -> RoutePlan(ordered candidates)   or raises
        ModelNotFound        nothing in the allowed jurisdictions serves the model
        NoCompliantBackend   something does, but every such endpoint is down/ejected
                             (or none is of the admin's x-factory-target)

Between the residency filter and health, `policy.canary` narrows the candidates: to the
pool (and revision) of an admin's target, else by each canary pool's weight (`draw`: the
router's random source; the side not drawn is ranked after the drawn one, for failover).

Under the `score` policy, latency outliers (`health.LatencyEjector`) are judged among the
ranked candidates and moved after the others, and a degraded (or observed-slow) candidate
due for a probe is moved to the front of this one request. Both only reorder the
candidates that passed the residency filter: the set is never widened.

The explanation lists *every* backend of the model (compliant or not) with the reason it
was or was not chosen; it is computed only when asked (the admin explain endpoint).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from factory_router.policy.canary import Split, split
from factory_router.policy.errors import ModelNotFound, NoCompliantBackend, clip
from factory_router.policy.fleet import Backend, Fleet
from factory_router.policy.health import Ejector, LatencyEjector
from factory_router.policy.policies import PolicyName, Ranked, Ranker, RouteRequest
from factory_router.policy.scoring import LoadView, predict


@dataclass(frozen=True)
class RoutePlan:
    ordered: list[Ranked]
    explanation: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = "routable"  # or "model_not_found" / "no_compliant_backend" (explain)
    probe: bool = False  # the first candidate is a latency probe

    @property
    def reason(self) -> str:
        first = self.ordered[0]
        if self.probe:
            return f"latency probe ({first.parts.ttft_source} ttft {first.parts.ttft_ms:.0f}ms)"
        why = f"lowest score {first.parts.score:.1f}ms"
        return why + (" (prefix affinity)" if first.affinity else "")


def healthy(
    candidates: list[Backend], ejector: Ejector, now: float
) -> tuple[list[Backend], dict[str, str]]:
    """Serving, non-ejected candidates; terminating ones only when nothing else serves."""
    excluded: dict[str, str] = {}
    ready: list[Backend] = []
    draining: list[Backend] = []
    for b in candidates:
        if not b.serving:
            excluded[b.id] = "endpoint not serving"
        elif ejector.is_ejected(b.id, now):
            excluded[b.id] = f"ejected until t={ejector.ejected_until(b.id):.1f}"
        elif b.terminating:
            draining.append(b)
        else:
            ready.append(b)
    if ready:
        for b in draining:
            excluded[b.id] = "terminating (ready replicas exist)"
        return ready, excluded
    return draining, excluded


def plan(
    fleet: Fleet,
    req: RouteRequest,
    *,
    ranker: Ranker,
    view: LoadView,
    ejector: Ejector,
    now: float,
    explain: bool = False,
    latency: LatencyEjector | None = None,
    draw: Callable[[], float] | None = None,
) -> RoutePlan:
    try:
        compliant = fleet.compliant(req.model, req.allowed)
    except ModelNotFound:
        if explain:
            rows = _explain(fleet, req, [], {}, ranker=ranker, view=view, latency=latency, now=now)
            return RoutePlan([], rows, "model_not_found")
        raise
    if req.target is not None:
        target = req.target
        chosen = Split([b for b in compliant if target.matches(b)], [], {})
        if not chosen.primary and not explain:
            raise NoCompliantBackend(
                f"No backend of target {clip(str(target))} serves model '{clip(req.model)}' "
                f"in the allowed jurisdictions ({', '.join(sorted(req.allowed))}).",
            )
    else:

        def serves(b: Backend) -> bool:
            return b.serving and not b.terminating and not ejector.is_ejected(b.id, now)

        chosen = split(compliant, fleet, draw, serves)
    usable, excluded = healthy(chosen.primary, ejector, now)
    excluded.update(chosen.aside)
    ordered = ranker.rank(usable, req, fleet, view) if usable else []
    probe = False
    if latency is not None and ranker.policy is PolicyName.SCORE and ordered:
        if not explain:
            judge_latency(ordered, latency, now)
        ordered, probe = latency_order(ordered, latency, now, probe=not explain, view=view)
    if chosen.failover:  # the sides of split pools not drawn: failover only
        spare, spare_excluded = healthy(chosen.failover, ejector, now)
        excluded.update(spare_excluded)
        if spare:
            ordered = ordered + ranker.rank(spare, req, fleet, view)
    explanation = (
        _explain(fleet, req, ordered, excluded, ranker=ranker, view=view, latency=latency, now=now)
        if explain
        else []
    )
    if not ordered and not explain:
        raise NoCompliantBackend(
            f"No healthy backend for model '{clip(req.model)}' in the allowed jurisdictions "
            f"({', '.join(sorted(req.allowed))}).",
        )
    return RoutePlan(ordered, explanation, "routable" if ordered else "no_compliant_backend", probe)


def region_subject(backend: Backend) -> str:
    return f"region:{backend.region}/{backend.model}"


def _median_of_others(figures: dict[str, float], me: str) -> float | None:
    others = [ms for key, ms in figures.items() if key != me]
    return statistics.median(others) if others else None


def judge_latency(ordered: list[Ranked], latency: LatencyEjector, now: float) -> None:
    """Judge every candidate against its pool peers, and every region against the other
    regions serving the model, on the client-observed figures of the score."""
    pools: defaultdict[str, dict[str, float]] = defaultdict(dict)
    regions: dict[str, float] = {}
    for r in ordered:
        b, parts = r.backend, r.parts
        if parts.observed_ttft_ms is not None:
            pools[b.pool][b.id] = parts.observed_ttft_ms
        if parts.observed_region_ttft_ms is not None:
            regions[region_subject(b)] = parts.observed_region_ttft_ms
    for r in ordered:
        b = r.backend
        mine = pools[b.pool]
        latency.judge(b.id, mine.get(b.id), _median_of_others(mine, b.id), now)
    for subject, ms in regions.items():
        latency.judge(subject, ms, _median_of_others(regions, subject), now)


def degradation(backend: Backend, latency: LatencyEjector, now: float) -> str | None:
    """Why the backend is a latency outlier now (itself or its region); None if not."""
    own = latency.describe(backend.id, now)
    if own is not None:
        return f"replica {own}"
    region = latency.describe(region_subject(backend), now)
    return f"region {region}" if region is not None else None


def _probeable(r: Ranked, view: LoadView) -> bool:
    """A probe measures what is in front of the engine, not a queue: nothing of this
    router's in flight there (that request will report), and a free slot if the batch
    capacity is known (a saturated replica is avoided for its load anyway, and a probe
    sent there would only wait)."""
    parts = r.parts
    free = parts.capacity is None or parts.outstanding < parts.capacity
    return free and view.inflight(r.backend.id) == 0


def latency_order(
    ordered: list[Ranked], latency: LatencyEjector, now: float, *, probe: bool, view: LoadView
) -> tuple[list[Ranked], bool]:
    """Degraded candidates after the others (stable); then, if `probe`, the first suspect
    (degraded, or whose client-observed figure outweighed its engine's) due for a probe
    and probeable goes first for this request. Returns the order and whether the first is
    a probe."""
    fine: list[Ranked] = []
    degraded: list[Ranked] = []
    for r in ordered:
        b = r.backend
        out_now = latency.degraded(b.id, now) or latency.degraded(region_subject(b), now)
        (degraded if out_now else fine).append(r)
    out = fine + degraded
    if not probe:
        return out, False
    latency.earn()
    suspects = [r for r in fine[1:] if r.parts.ttft_source == "observed"]
    for r in (*degraded, *suspects):
        if r is out[0] or not latency.probe_due(r.backend.id, now) or not _probeable(r, view):
            continue
        latency.probed(r.backend.id, now)
        out.remove(r)
        return [r, *out], True
    return out, False


def _explain(
    fleet: Fleet,
    req: RouteRequest,
    ordered: list[Ranked],
    excluded: dict[str, str],
    *,
    ranker: Ranker,
    view: LoadView,
    latency: LatencyEjector | None,
    now: float,
) -> list[dict[str, Any]]:
    rank_of = {r.backend.id: (i, r) for i, r in enumerate(ordered)}
    rows: list[dict[str, Any]] = []
    for b in fleet.backends:
        if b.model != req.model:
            continue
        row: dict[str, Any] = {
            "backend": b.id,
            "pool": b.pool,
            "region": b.region,
            "jurisdiction": fleet.jurisdiction_of(b),
            "url": b.url,
            "serving": b.serving,
            "terminating": b.terminating,
        }
        residency = fleet.exclusion_reason(b, req.allowed)
        if residency is not None:
            row.update(eligible=False, verdict=f"excluded: {residency}")
        elif b.id in excluded:
            row.update(eligible=False, verdict=f"excluded: {excluded[b.id]}")
            row["parts"] = predict(b, req.client_region, fleet, view, ranker.cfg).as_dict()
        elif b.id in rank_of:
            i, r = rank_of[b.id]
            row.update(eligible=True, rank=i, parts=r.parts.as_dict(), affinity=r.affinity)
            row["verdict"] = "chosen" if i == 0 else f"failover #{i}"
        if latency is not None and residency is None:
            row["latency_outlier"] = degradation(b, latency, now)
        rows.append(row)
    rows.sort(key=lambda r: (not r.get("eligible", False), r.get("rank", 0), r["backend"]))
    return rows
