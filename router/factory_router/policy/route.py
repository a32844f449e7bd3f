"""The routing decision: residency filter, health filter, ranking, and its explanation.

    plan() -> RoutePlan(ordered candidates)   or raises
        ModelNotFound        nothing in the allowed jurisdictions serves the model
        NoCompliantBackend   something does, but every such endpoint is down/ejected

The explanation lists *every* backend of the model (compliant or not) with the reason it
was or was not chosen; it is computed only when asked (the admin explain endpoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from factory_router.policy.errors import ModelNotFound, NoCompliantBackend
from factory_router.policy.fleet import Backend, Fleet
from factory_router.policy.health import Ejector
from factory_router.policy.policies import Ranked, Ranker, RouteRequest
from factory_router.policy.scoring import LoadView, predict


@dataclass(frozen=True)
class RoutePlan:
    ordered: list[Ranked]
    explanation: list[dict[str, Any]] = field(default_factory=list)
    outcome: str = "routable"  # or "model_not_found" / "no_compliant_backend" (explain)

    @property
    def reason(self) -> str:
        first = self.ordered[0]
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
) -> RoutePlan:
    try:
        compliant = fleet.compliant(req.model, req.allowed)
    except ModelNotFound:
        if explain:
            rows = _explain(fleet, req, [], {}, ranker=ranker, view=view)
            return RoutePlan([], rows, "model_not_found")
        raise
    usable, excluded = healthy(compliant, ejector, now)
    ordered = ranker.rank(usable, req, fleet, view) if usable else []
    explanation = (
        _explain(fleet, req, ordered, excluded, ranker=ranker, view=view) if explain else []
    )
    if not ordered and not explain:
        raise NoCompliantBackend(
            f"No healthy backend for model '{req.model}' in the allowed jurisdictions "
            f"({', '.join(sorted(req.allowed))}).",
        )
    return RoutePlan(ordered, explanation, "routable" if ordered else "no_compliant_backend")


def _explain(
    fleet: Fleet,
    req: RouteRequest,
    ordered: list[Ranked],
    excluded: dict[str, str],
    *,
    ranker: Ranker,
    view: LoadView,
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
        rows.append(row)
    rows.sort(key=lambda r: (not r.get("eligible", False), r.get("rank", 0), r["backend"]))
    return rows
