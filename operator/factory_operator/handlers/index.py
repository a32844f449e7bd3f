"""In-memory index of live factories: which regions they use, one wake-up event and one lock
each. Watchers of FleetRegions, Nodes and Deployments wake the affected factories' resync
daemons through it, so a re-evaluation writes nothing unless something really changed (no
"touch" annotations). One instance per operator, created in ``build_registry``.

It also remembers what each Node looked like last (labels, accelerators, readiness), so
that a node event that changes none of it (a status heartbeat) refreshes nothing, and it
coalesces FleetRegion status refreshes: many node events in a burst (operator start, a node
pool scaling) cost one refresh per region, not one each."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from factory_operator.plan import NodeInfo

Key = tuple[str, str]


@dataclass
class _Entry:
    regions: frozenset[str] = frozenset()
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class FactoryIndex:
    """Factories by (namespace, name), and the selectors of known regions."""

    def __init__(self) -> None:
        self._entries: dict[Key, _Entry] = {}
        self._region_selectors: dict[str, dict[str, str]] = {}
        self._nodes: dict[str, NodeInfo] = {}
        self._stale_regions: set[str] = set()
        self._region_locks: dict[str, asyncio.Lock] = {}

    def entry(self, key: Key) -> _Entry:
        """The entry of a factory, created on first use."""
        return self._entries.setdefault(key, _Entry())

    def forget(self, key: Key) -> None:
        """Drop a factory (its daemon stopped)."""
        self._entries.pop(key, None)

    def set_regions(self, key: Key, regions: frozenset[str]) -> None:
        """Record which regions a factory's pools use."""
        self.entry(key).regions = regions

    def set_region_selector(self, region: str, selector: Mapping[str, str] | None) -> None:
        """Record (or with None, drop) the node selector of a region."""
        if selector is None:
            self._region_selectors.pop(region, None)
        else:
            self._region_selectors[region] = dict(selector)

    def regions_of_node(self, labels: Mapping[str, str]) -> set[str]:
        """Regions whose selector matches a node's labels."""
        return {
            r
            for r, sel in self._region_selectors.items()
            if all(labels.get(k) == v for k, v in sel.items())
        }

    def wake(self, key: Key) -> None:
        """Ask a factory's daemon to re-evaluate now."""
        if key in self._entries:
            self._entries[key].wake.set()

    def wake_regions(self, regions: set[str]) -> int:
        """Wake every factory with a pool in one of ``regions``; returns how many."""
        keys = [k for k, e in self._entries.items() if e.regions & regions]
        for key in keys:
            self.wake(key)
        return len(keys)

    def node_changed(self, name: str, info: NodeInfo | None) -> set[str]:
        """Record a node's facts (None: deleted); the regions whose status they change,
        those of its old labels and of its new ones (none when nothing changed)."""
        before = self._nodes.pop(name, None) if info is None else self._nodes.get(name)
        if info is not None:
            self._nodes[name] = info
        if before == info:
            return set()
        regions: set[str] = set()
        for seen in (before, info):
            if seen is not None:
                regions |= self.regions_of_node(seen.labels)
        return regions

    def stale_regions_of_node(self, labels: Mapping[str, str]) -> set[str]:
        """The node's regions whose last refresh failed: a later event of the node (even a
        heartbeat) retries them."""
        return self.regions_of_node(labels) & self._stale_regions

    def mark_region_stale(self, region: str) -> None:
        """Something the region's status depends on changed."""
        self._stale_regions.add(region)

    def region_lock(self, region: str) -> asyncio.Lock:
        """Serialises the status refreshes of one region."""
        return self._region_locks.setdefault(region, asyncio.Lock())

    def take_stale(self, region: str) -> bool:
        """True once per batch of changes: the caller refreshes; later callers waiting on
        the same lock find the region fresh and skip."""
        if region in self._stale_regions:
            self._stale_regions.discard(region)
            return True
        return False
