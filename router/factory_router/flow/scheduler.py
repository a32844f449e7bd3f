"""The flow queue, pure: who is served next and who is shed, in the manner of llm-d's flow
control (priority bands, one queue per flow within a band, round robin between flows).

    band (a tenant's `PriorityClass`)  served highest first: a lower band gets capacity only
                                       when no request of a higher one can use it
    flow (a tenant, within its band)   served in turn: the flow just served goes to the back,
                                       so tenants with requests waiting get equal shares
                                       whatever each sends
    entry (a request, within its flow) first come, first served; an entry whose candidates
                                       are full (another model, other jurisdictions) is
                                       passed over for the next one that can go

Shedding, when `max_queued` entries wait and one more comes: the newest entry of the longest
flow of the lowest band present, the newcomer counted in (so a lower class is shed before a
higher one, and within a class the tenant with most waiting loses first; on a tie the
newcomer goes). Deadlines are the caller's (`flow.control`): an entry that waited its
class's longest wait is `remove`d and shed.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from factory_router.policy.tenants import PriorityClass

T = TypeVar("T")
BANDS = tuple(sorted(PriorityClass, key=lambda c: c.rank))  # highest first


@dataclass(eq=False)
class Entry(Generic[T]):
    """One waiting request: its flow (tenant, class), what its capacity depends on (model,
    allowed jurisdictions), when it came, and the caller's handle (its future)."""

    tenant: str
    priority: PriorityClass
    model: str
    allowed: frozenset[str]
    since: float
    handle: T
    queued: bool = field(default=False, init=False)


class FlowScheduler(Generic[T]):
    """Waiting requests by band, flow and arrival; at most `max_queued` in all."""

    def __init__(self, max_queued: int) -> None:
        if max_queued < 0:
            raise ValueError("max_queued must be >= 0")
        self.max_queued = max_queued
        self.size = 0
        self._bands: dict[PriorityClass, OrderedDict[str, deque[Entry[T]]]] = {
            band: OrderedDict() for band in BANDS
        }
        self._per_band = dict.fromkeys(BANDS, 0)

    def queued(self, band: PriorityClass) -> int:
        return self._per_band[band]

    def flow_length(self, band: PriorityClass, tenant: str) -> int:
        flow = self._bands[band].get(tenant)
        return len(flow) if flow is not None else 0

    def push(self, entry: Entry[T]) -> Entry[T] | None:
        """Queue `entry`. When full, the entry shed to make room (see the module docstring):
        `entry` itself (then not queued) or one that waited (then no longer queued)."""
        if self.size >= self.max_queued:
            victim = self._victim(entry)
            if victim is entry:
                return entry
            self.remove(victim)
        else:
            victim = None
        self._bands[entry.priority].setdefault(entry.tenant, deque()).append(entry)
        entry.queued = True
        self.size += 1
        self._per_band[entry.priority] += 1
        return victim

    def remove(self, entry: Entry[T]) -> bool:
        """Take `entry` out (it waited too long, or its client left); False if not queued."""
        if not entry.queued:
            return False
        band = self._bands[entry.priority]
        flow = band[entry.tenant]
        flow.remove(entry)
        if not flow:
            del band[entry.tenant]
        self._taken(entry)
        return True

    def pop_next(self, can_go: Callable[[Entry[T]], bool]) -> Entry[T] | None:
        """The next entry to serve among those `can_go` accepts (see the module docstring),
        taken out of the queue; None when none can go."""
        for band in self._bands.values():
            for tenant, flow in band.items():
                for entry in flow:
                    if can_go(entry):
                        flow.remove(entry)
                        if flow:
                            band.move_to_end(tenant)  # its turn is used: to the back
                        else:
                            del band[tenant]
                        self._taken(entry)
                        return entry
        return None

    def entries(self) -> Iterator[Entry[T]]:
        """Every waiting entry, in serving order of bands and flows."""
        for band in self._bands.values():
            for flow in band.values():
                yield from flow

    def _taken(self, entry: Entry[T]) -> None:
        entry.queued = False
        self.size -= 1
        self._per_band[entry.priority] -= 1

    def _victim(self, newcomer: Entry[T]) -> Entry[T]:
        present = [band for band in BANDS if self._per_band[band]]
        lowest = max([*present, newcomer.priority], key=lambda band: band.rank)
        victim: Entry[T] | None = None
        length = -1
        if lowest is newcomer.priority:
            victim, length = newcomer, self.flow_length(lowest, newcomer.tenant) + 1
        for flow in self._bands[lowest].values():
            if len(flow) > length:  # a tie leaves the newcomer (or the earlier flow)
                victim, length = flow[-1], len(flow)
        return victim if victim is not None else newcomer
