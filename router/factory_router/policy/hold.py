"""Scale from zero, the pure part: which pool a held request is counted for, how long it may
wait, and the bounded book of held requests (issue 17, item 3).

A request is held only when its model has compliant pools (`Fleet.waking`: residency-allowed,
no serving replica, starting or woken on demand by an autoscaler); with none it gets the
residency filter's immediate error, as before (fail closed: nothing is held that cannot be
served in the tenant's jurisdictions).

Each held request counts once, on one pool: the one that should wake up. `choose_pool`
prefers, as the operator's spill does (`plan/jurisdiction.py`): a pool already starting
(growth granted is not granted again), then a pool as near the client as the nearest
(`NEAR_MS`), then the cheaper per request slot (replica-hour price over its batch capacity),
then by name. The operator reads the count as `factory_router_pending_requests` on that
pool's own labels (namespace, factory, pool) and scales it from zero; the other pools stay
at zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from factory_router.policy.errors import BadRequest, clip
from factory_router.policy.fleet import Backend, Pool

HOLD_TIMEOUT_HEADER = "x-factory-hold-timeout"
# Regions this close to the nearest count as equally near (the operator's NEAR_MS).
NEAR_MS = 30.0
# Batch capacity assumed when a pool does not set maxNumSeqs (the operator's default).
DEFAULT_MAX_NUM_SEQS = 256


@dataclass(frozen=True)
class PendingKey:
    """The labels of one pool's pending-requests series: all from discovered factories and
    regions (bounded), never from what a client sent."""

    namespace: str
    factory: str
    pool: str
    region: str
    jurisdiction: str
    model: str


def hold_timeout(header: str | None, limit: float) -> float:
    """Seconds this request may be held: the router's limit, or less when the client's
    `x-factory-hold-timeout` asks for less (it only narrows; 0: never held)."""
    if header is None:
        return limit
    try:
        asked = float(header.strip())
    except ValueError:
        asked = math.nan
    if not math.isfinite(asked) or asked < 0:
        raise BadRequest(
            f"{HOLD_TIMEOUT_HEADER} must be a number of seconds >= 0, not '{clip(header)}'.",
            param=HOLD_TIMEOUT_HEADER,
        )
    return min(asked, limit)


def choose_pool(pools: Sequence[Pool], rtt_ms: Callable[[str | None], float]) -> Pool:
    """The pool a held request is counted for (see the module docstring). `pools` not empty."""
    nearest = min(rtt_ms(p.region) for p in pools)

    def key(p: Pool) -> tuple[int, float, float, str, str, str]:
        distance = rtt_ms(p.region)
        tier = 0.0 if distance <= nearest + NEAR_MS else distance
        per_slot = p.cost / (p.max_num_seqs or DEFAULT_MAX_NUM_SEQS)
        return (0 if p.desired_replicas > 0 else 1, tier, per_slot, p.name, p.namespace, p.factory)

    return min(pools, key=key)


def has_coming_replica(backends: Iterable[Backend]) -> bool:
    """A plan worth leaving a hold for: some candidate is not terminating. Replicas on their
    way out (a pool just scaled to zero, its pod serving while it drains) are not the ones a
    held request waits for; a request that was not held still uses them as a last resort."""
    return any(not b.terminating for b in backends)


class HoldBook:
    """Requests held now: at most `max_requests` per model, each counted on one pool."""

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self._per_model: dict[str, int] = {}
        self._pending: dict[PendingKey, int] = {}

    def held(self, model: str) -> int:
        return self._per_model.get(model, 0)

    def admit(self, key: PendingKey) -> bool:
        """Hold one more request for `key.model`; False when its queue is full."""
        count = self._per_model.get(key.model, 0)
        if count >= self.max_requests:
            return False
        self._per_model[key.model] = count + 1
        self._pending[key] = self._pending.get(key, 0) + 1
        return True

    def move(self, old: PendingKey, new: PendingKey) -> None:
        """The request now counts for another pool of the same model (the fleet changed)."""
        if old != new:
            self._drop(old)
            self._pending[new] = self._pending.get(new, 0) + 1

    def release(self, key: PendingKey) -> None:
        """The request is no longer held (served, refused, or gone)."""
        self._drop(key)
        count = self._per_model.get(key.model, 0) - 1
        if count > 0:
            self._per_model[key.model] = count
        else:
            self._per_model.pop(key.model, None)

    def _drop(self, key: PendingKey) -> None:
        count = self._pending.get(key, 0) - 1
        if count > 0:
            self._pending[key] = count
        else:
            self._pending.pop(key, None)  # no series left behind for a pool nothing waits on

    def pending(self) -> Iterator[tuple[PendingKey, int]]:
        """Every pool with requests held for it, and how many."""
        yield from list(self._pending.items())
