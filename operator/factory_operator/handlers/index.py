"""What kopf does not keep for the operator: which regions a node event touches, and the
coalescing of FleetRegion status refreshes.

The rest lives where kopf keeps it: regions, nodes, children and each factory's wake-up
event and lock in kopf indexes and memos (``handlers.indexes``); a node's last facts
(labels, accelerators, readiness) in the node's kopf memo, so that an event that changes
none of them (a status heartbeat) refreshes nothing. Many node events in a burst (operator
start, a node pool scaling) cost one refresh per region, not one each."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from factory_operator.plan import NodeInfo


def regions_of_node(
    labels: Mapping[str, str], selectors: Mapping[str, Mapping[str, str]]
) -> set[str]:
    """Regions whose node selector matches a node's labels."""
    return {r for r, sel in selectors.items() if all(labels.get(k) == v for k, v in sel.items())}


def changed_regions(
    before: NodeInfo | None, after: NodeInfo | None, selectors: Mapping[str, Mapping[str, str]]
) -> set[str]:
    """The regions whose status a node's change touches (those of its old labels and of its
    new ones); none when its facts did not change."""
    if before == after:
        return set()
    regions: set[str] = set()
    for seen in (before, after):
        if seen is not None:
            regions |= regions_of_node(seen.labels, selectors)
    return regions


class RegionRefreshes:
    """Regions whose status needs a refresh, and one lock per region."""

    def __init__(self) -> None:
        self._stale: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    def stale_among(self, regions: set[str]) -> set[str]:
        """Those of ``regions`` whose last refresh failed: a later event of one of their
        nodes (even a heartbeat) retries them."""
        return regions & self._stale

    @property
    def any_stale(self) -> bool:
        """Whether some refresh is owed."""
        return bool(self._stale)

    def mark_stale(self, region: str) -> None:
        """Something the region's status depends on changed."""
        self._stale.add(region)

    def lock(self, region: str) -> asyncio.Lock:
        """Serialises the status refreshes of one region."""
        return self._locks.setdefault(region, asyncio.Lock())

    def take_stale(self, region: str) -> bool:
        """True once per batch of changes: the caller refreshes; later callers waiting on
        the same lock find the region fresh and skip."""
        if region in self._stale:
            self._stale.discard(region)
            return True
        return False
