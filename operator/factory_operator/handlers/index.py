"""In-memory index of live factories: which regions they use, one wake-up event and one lock
each. Watchers of FleetRegions, Nodes and Deployments wake the affected factories' resync
daemons through it, so a re-evaluation writes nothing unless something really changed (no
"touch" annotations). One instance per operator, created in ``build_registry``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

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
