"""Ranking policies: `score` (the router's own) and the baselines `round-robin` and
`least-request`. All of them only ever see candidates that passed the residency filter;
they order them, and the order is the failover sequence.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from factory_router.policy.affinity import preferred
from factory_router.policy.canary import Target
from factory_router.policy.config import ScoringConfig
from factory_router.policy.fleet import Backend, Fleet
from factory_router.policy.scoring import LoadView, ScoreParts, predict


class PolicyName(StrEnum):
    SCORE = "score"
    ROUND_ROBIN = "round-robin"
    LEAST_REQUEST = "least-request"


@dataclass(frozen=True)
class RouteRequest:
    model: str
    allowed: frozenset[str]
    client_region: str | None
    prefix_key: str | None = None
    request_key: str = ""  # spreads exact ties across requests, deterministically
    target: Target | None = None  # an admin's x-factory-target (policy.canary)


@dataclass(frozen=True)
class Ranked:
    backend: Backend
    parts: ScoreParts
    affinity: bool


def _tiebreak(request_key: str, backend_id: str) -> bytes:
    return hashlib.blake2b(f"{request_key}|{backend_id}".encode(), digest_size=8).digest()


class Ranker:
    """Orders candidates under one policy. Holds the round-robin counters (pure state)."""

    def __init__(self, policy: PolicyName, cfg: ScoringConfig) -> None:
        self.policy = policy
        self.cfg = cfg
        self._rr: defaultdict[str, int] = defaultdict(int)

    def rank(
        self,
        candidates: Sequence[Backend],
        req: RouteRequest,
        fleet: Fleet,
        view: LoadView,
    ) -> list[Ranked]:
        owners = self._affinity_owners(candidates, req, view)
        scored = [
            Ranked(
                b,
                predict(
                    b,
                    req.client_region,
                    fleet,
                    view,
                    self.cfg,
                    affinity_bonus_ms=self.cfg.affinity_bonus_ms if b.id in owners else 0.0,
                ),
                b.id in owners,
            )
            for b in candidates
        ]
        if self.policy is PolicyName.ROUND_ROBIN:
            ordered = sorted(scored, key=lambda r: r.backend.id)
            start = self._rr[req.model] % len(ordered) if ordered else 0
            self._rr[req.model] += 1
            return ordered[start:] + ordered[:start]
        if self.policy is PolicyName.LEAST_REQUEST:
            return sorted(
                scored,
                key=lambda r: (
                    view.inflight(r.backend.id),
                    _tiebreak(req.request_key, r.backend.id),
                ),
            )
        return sorted(
            scored, key=lambda r: (r.parts.score, _tiebreak(req.request_key, r.backend.id))
        )

    def _affinity_owners(
        self, candidates: Sequence[Backend], req: RouteRequest, view: LoadView
    ) -> set[str]:
        """Per pool, the replica owning the prompt prefix, unless it is overloaded."""
        if self.policy is not PolicyName.SCORE or req.prefix_key is None:
            return set()
        pools: defaultdict[str, list[str]] = defaultdict(list)
        for b in candidates:
            pools[b.pool].append(b.id)
        owners: set[str] = set()
        for ids in pools.values():
            if len(ids) < 2:
                continue
            owner = preferred(req.prefix_key, ids)
            if owner is not None and view.inflight(owner) < self.cfg.affinity_max_outstanding:
                owners.add(owner)
        return owners
