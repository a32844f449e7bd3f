"""The fleet as the policy sees it (regions, backends, RTTs) and the residency filter.

A backend is a *candidate* for a request only if all of these hold (fail closed):
its region is set and known, that region has a jurisdiction, the jurisdiction is in the
request's allowed set, and it serves the requested model. Nothing else about a backend
(its URL, its labels, what it says about itself) can make it compliant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from factory_router.policy.config import ScoringConfig
from factory_router.policy.errors import ModelNotFound, clip


@dataclass(frozen=True)
class Region:
    name: str
    jurisdiction: str | None  # None: unknown, so nothing in it is ever a candidate


@dataclass(frozen=True)
class Backend:
    """One replica (or one regional endpoint) serving one model."""

    id: str  # unique and stable: "<pool>/<pod or address>"
    model: str
    pool: str
    region: str | None
    url: str  # base URL, no trailing slash, e.g. http://10.0.0.5:8000
    factory: str | None = None
    namespace: str | None = None
    pod: str | None = None  # matches the `pod` label of Prometheus series
    cost: float = 0.0  # USD per million tokens (`policy.cost`); x ScoringConfig.cost_weight_ms
    cost_source: str = "static"  # policy.cost's source, or "static" (backends file)
    max_num_seqs: int | None = None  # batch capacity (vLLM --max-num-seqs), when known
    serving: bool = True  # EndpointSlice `serving`
    terminating: bool = False  # EndpointSlice `terminating`: only a last resort
    via_endpoint: bool = False  # a region's `spec.endpoint` (e.g. its router), not an engine
    revision: str | None = None  # its pod's `<prefix>/revision` label (None: unknown)
    pool_name: str | None = None  # status.pools[].name (`pool` is its Service's name)

    @property
    def bare_pool(self) -> str:
        """The pool's own name, as the per-revision series and the target header name it
        (a static backend's `pool` is that name already)."""
        return self.pool_name or self.pool


@dataclass(frozen=True)
class Canary:
    """A pool's canary (`status.pools[].canary`): the revision under test and its share of
    requests in percent (`policy.canary` splits by it)."""

    revision: str
    weight: int


@dataclass(frozen=True)
class Pool:
    """One pool of a factory as its status shows it, replicas or none: what a request is held
    for while the pool scales up from zero (`policy.hold`)."""

    namespace: str
    factory: str
    name: str  # the pool's own name (status.pools[].name), as the operator's series label it
    model: str
    region: str | None
    service: str  # `<factory>-<pool>`: `Backend.pool` of its replicas
    desired_replicas: int = 0  # status.pools[].desiredReplicas: > 0 while it starts
    wakeable: bool = False  # an autoscaler brings it up on demand (spec.autoscaling, max >= 1)
    cost: float = 0.0  # one replica-hour (FleetRegion pricing x accelerator count)
    max_num_seqs: int | None = None
    canary: Canary | None = None  # status.pools[].canary, while the pool has one


@dataclass(frozen=True)
class RttMatrix:
    """Round-trip times between regions in ms, symmetric; measured values override."""

    pairs: Mapping[frozenset[str], float] = field(default_factory=dict)

    @classmethod
    def from_nested(cls, nested: Mapping[str, Mapping[str, float]]) -> RttMatrix:
        pairs: dict[frozenset[str], float] = {}
        for a, row in nested.items():
            for b, ms in row.items():
                pairs[frozenset((a, b))] = float(ms)
        return cls(pairs)

    def rtt_ms(self, a: str | None, b: str | None, cfg: ScoringConfig) -> float:
        if a is None or b is None:
            return cfg.default_rtt_ms
        found = self.pairs.get(frozenset((a, b)))
        if found is not None:
            return found
        return cfg.same_region_rtt_ms if a == b else cfg.default_rtt_ms


@dataclass(frozen=True)
class Fleet:
    """An immutable view of the fleet; discovery builds a new one on every change."""

    regions: Mapping[str, Region]
    backends: tuple[Backend, ...]
    rtt: RttMatrix = field(default_factory=RttMatrix)
    pools: tuple[Pool, ...] = ()  # every pool in the factories' status (scale from zero)

    @cached_property
    def _canaries(self) -> dict[tuple[str, str], Canary]:
        return {(p.namespace, p.service): p.canary for p in self.pools if p.canary is not None}

    def canary_of(self, backend: Backend) -> Canary | None:
        """The canary of the backend's pool, if it has one."""
        if not self._canaries:
            return None
        return self._canaries.get((backend.namespace or "", backend.pool))

    def jurisdiction_of(self, backend: Backend) -> str | None:
        if not backend.region:
            return None
        region = self.regions.get(backend.region)
        return region.jurisdiction if region is not None else None

    @property
    def jurisdictions(self) -> frozenset[str]:
        return frozenset(r.jurisdiction for r in self.regions.values() if r.jurisdiction)

    def exclusion_reason(self, backend: Backend, allowed: frozenset[str]) -> str | None:
        """Why a backend may not take a request with these jurisdictions (None: it may)."""
        return self.region_exclusion(backend.region, allowed)

    def region_exclusion(self, region: str | None, allowed: frozenset[str]) -> str | None:
        """Why nothing in `region` may take a request with these jurisdictions (None: it may)."""
        if not region:
            return "backend has no region"
        if region not in self.regions:
            return f"region {region!r} is unknown"
        jurisdiction = self.regions[region].jurisdiction
        if not jurisdiction:
            return f"region {region!r} has no jurisdiction"
        if jurisdiction not in allowed:
            return f"jurisdiction {jurisdiction} not allowed"
        return None

    def waking(self, model: str, allowed: frozenset[str]) -> list[Pool]:
        """Compliant pools of `model` with no serving replica that are starting or that an
        autoscaler brings up on demand: what a request may be held for. Empty: nothing
        compliant can come (fail closed: the request gets today's immediate error)."""
        serving = {(b.namespace, b.pool) for b in self.backends if b.serving}
        return [
            p
            for p in self.pools
            if p.model == model
            and (p.wakeable or p.desired_replicas > 0)
            and (p.namespace, p.service) not in serving
            and self.region_exclusion(p.region, allowed) is None
        ]

    def compliant(self, model: str, allowed: frozenset[str]) -> list[Backend]:
        """The residency filter. Raises ModelNotFound when nothing allowed serves `model`
        (whether or not it is served elsewhere: that is not revealed)."""
        out = [
            b
            for b in self.backends
            if b.model == model and self.exclusion_reason(b, allowed) is None
        ]
        if not out:
            raise ModelNotFound(
                f"The model '{clip(model)}' does not exist or you do not have access to it.",
                param="model",
            )
        return out

    def models_for(self, allowed: frozenset[str]) -> list[str]:
        """Models with at least one compliant backend (what /v1/models lists)."""
        return sorted({b.model for b in self.backends if self.exclusion_reason(b, allowed) is None})


def build_fleet(
    regions: Iterable[Region],
    backends: Iterable[Backend],
    rtt: RttMatrix | None = None,
    pools: Iterable[Pool] = (),
) -> Fleet:
    return Fleet(
        regions={r.name: r for r in regions},
        backends=tuple(backends),
        rtt=rtt or RttMatrix(),
        pools=tuple(pools),
    )
