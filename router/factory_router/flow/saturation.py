"""Is a backend at capacity? The router's own in-flight count there, blended with the engine's
running + waiting from the load snapshot (`policy.scoring.blended_outstanding`), against its
batch capacity (`LoadView.capacity`: the engine's `--max-num-seqs` from discovery or the
backends file, else learned from the snapshots). A backend whose capacity is unknown is never
full: without a figure the router cannot tell, and it does not queue on a guess.
"""

from __future__ import annotations

from collections.abc import Iterable

from factory_router.policy.fleet import Backend
from factory_router.policy.scoring import LoadView, ScoreParts, blended_outstanding


def has_room(backend: Backend, view: LoadView) -> bool:
    capacity = view.capacity(backend)
    if capacity is None:
        return True
    inflight = view.inflight(backend.id)
    return blended_outstanding(backend, view, view.sample(backend), inflight) < capacity


def parts_have_room(parts: ScoreParts) -> bool:
    """The same test on the figures the plan already computed (the request path's one check)."""
    return parts.capacity is None or parts.outstanding < parts.capacity


def any_room(backends: Iterable[Backend], view: LoadView) -> bool:
    return any(has_room(b, view) for b in backends)
