"""Canary split and admin targeting: which revisions of a pool a request may go to.

Both work on the candidates the residency filter kept (`Fleet.compliant`) and only ever
remove or reorder them: neither can widen the set.

Split (`split`): a pool whose status has a canary (`Fleet.canary_of`) with 0 < weight < 100
draws once per request (`draw()`, uniform in [0, 1): the router's seeded source, injected
in tests). With probability weight / 100 only the pool's replicas whose revision is the
canary's stay candidates, otherwise only the others; the side not drawn is kept after them,
for failover (retries before the first byte). When the drawn side has no replica that
serves (serving, not terminating, not ejected), the other side is taken instead:
availability first. Weight 0 (the canary starts, or was just rolled back): the canary's
replicas only when no stable replica serves, as terminating ones; weight 100: the stable
ones likewise. A replica of unknown revision counts as stable. Without a draw (the explain
endpoint) both sides of a split pool stay candidates.

Targeting (`requested_target`, header `x-factory-target:
<namespace>/<factory>/<pool>[@<revision>]`, `names.TARGET_HEADER`): the operator's golden
prompts to one pool, one revision. Only a tenant with `admin: true` may send it (else 403
`target_not_allowed`, whatever the value); malformed: 400 `invalid_target`. A targeted
request's candidates are the compliant backends of that pool (and revision), unsplit, never
a region reached through its `spec.endpoint` (its router would choose the pool and revision
itself); none: 503 `no_compliant_backend` (`policy.route`). The header is never sent upstream (the
proxy forwards an allowlist of headers).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from factory_contract import names
from factory_router.policy.errors import InvalidTarget, TargetNotAllowed, clip
from factory_router.policy.fleet import Backend, Canary, Fleet
from factory_router.policy.tenants import Tenant

TARGET_HEADER = names.TARGET_HEADER
# Kubernetes object names (DNS-1123 subdomains; a namespace is a label, which matches too)
# and a label value (a revision is 10 hex characters; any label value is accepted).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_REVISION = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Target:
    """The pool (and revision) an admin's request is restricted to."""

    namespace: str
    factory: str
    pool: str  # the pool's own name (status.pools[].name)
    revision: str | None = None

    def matches(self, backend: Backend) -> bool:
        # Never a region's `spec.endpoint`: the router there gets no target header and
        # would choose its own pool and revision.
        return (
            not backend.via_endpoint
            and backend.bare_pool == self.pool
            and (backend.factory or "") == self.factory
            and (backend.namespace or "") == self.namespace
            and (self.revision is None or backend.revision == self.revision)
        )

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision is not None else ""
        return f"{self.namespace}/{self.factory}/{self.pool}{at}"


def parse_target(value: str) -> Target:
    """`<namespace>/<factory>/<pool>[@<revision>]`; InvalidTarget (400) otherwise."""
    text = value.strip()
    where, at, revision = text.partition("@")
    parts = where.split("/")
    if len(parts) != 3 or not all(_NAME.match(p) for p in parts):
        raise InvalidTarget(
            f"{TARGET_HEADER}: expected <namespace>/<factory>/<pool>[@<revision>], got "
            f"{clip(text)!r}",
            param="target",
        )
    if at and not _REVISION.match(revision):
        raise InvalidTarget(
            f"{TARGET_HEADER}: malformed revision {clip(revision)!r}", param="target"
        )
    return Target(parts[0], parts[1], parts[2], revision if at else None)


def requested_target(tenant: Tenant, value: str | None) -> Target | None:
    """The request's target: None when the header is absent or blank; 403 from a tenant
    that is not an admin (before the value is looked at); 400 when malformed."""
    if value is None or not value.strip():
        return None
    if not tenant.admin:
        raise TargetNotAllowed(
            f"{TARGET_HEADER} is accepted only from tenants with admin: true.", param="target"
        )
    return parse_target(value)


@dataclass(frozen=True)
class Split:
    """The candidates after the split: `primary` to rank first, `failover` (the sides not
    drawn) to rank after them, and the replicas set aside with why."""

    primary: list[Backend]
    failover: list[Backend]
    aside: dict[str, str]


def split(
    candidates: list[Backend],
    fleet: Fleet,
    draw: Callable[[], float] | None,
    serves: Callable[[Backend], bool],
) -> Split:
    """Split each canary pool of `candidates` by its weight (see the module docstring)."""
    groups: dict[tuple[str, str], tuple[Canary, list[Backend]]] = {}
    primary: list[Backend] = []
    for b in candidates:
        found = fleet.canary_of(b)
        if found is None:
            primary.append(b)
        else:
            groups.setdefault((b.namespace or "", b.pool), (found, []))[1].append(b)
    if not groups:
        return Split(candidates, [], {})
    failover: list[Backend] = []
    aside: dict[str, str] = {}
    for canary, group in groups.values():
        new = [b for b in group if b.revision == canary.revision]
        old = [b for b in group if b.revision != canary.revision]
        if 0 < canary.weight < 100:
            if draw is None:
                primary += group
                continue
            chosen, other = (new, old) if draw() * 100 < canary.weight else (old, new)
            last_resort = False
        else:
            chosen, other = (new, old) if canary.weight >= 100 else (old, new)
            last_resort = True
        if not any(map(serves, chosen)) and any(map(serves, other)):
            chosen, other = other, chosen  # availability first
        primary += chosen
        if not last_resort:
            failover += other
        elif any(map(serves, chosen)):
            for b in other:
                aside[b.id] = f"canary weight {canary.weight}: other revision as last resort"
        else:
            primary += other  # nothing serves on either side: health decides
    return Split(primary, failover, aside)
