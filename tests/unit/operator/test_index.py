"""Which node events change a region's status, and refresh coalescing (``handlers.index``)."""

from __future__ import annotations

from factory_operator.handlers.index import RegionRefreshes, changed_regions, regions_of_node
from factory_operator.plan import NodeInfo

GPUS = {"nvidia.com/gpu": 8}
SELECTORS = {r: {"topology.kubernetes.io/region": r} for r in ("eu-west-1", "eu-central-1")}


def node(region: str, *, ready: bool = True, gpus: int = 8) -> NodeInfo:
    labels = {"topology.kubernetes.io/region": region}
    return NodeInfo("n0", labels, {"nvidia.com/gpu": gpus}, ready=ready)


def test_only_changed_node_facts_touch_a_region() -> None:
    steps = [
        (None, node("eu-west-1"), {"eu-west-1"}),  # first seen
        (node("eu-west-1"), node("eu-west-1"), set()),  # a heartbeat
        (node("eu-west-1"), node("eu-west-1", ready=False), {"eu-west-1"}),
        (node("eu-west-1", ready=False), node("eu-west-1", ready=False, gpus=4), {"eu-west-1"}),
        # Relabelled into another region: both statuses change.
        (node("eu-west-1"), node("eu-central-1"), {"eu-west-1", "eu-central-1"}),
        (node("eu-central-1"), None, {"eu-central-1"}),  # deleted
        (None, None, set()),  # deleted twice (a relist)
        (None, NodeInfo("n1", {"other": "x"}, GPUS), set()),
    ]
    for before, after, regions in steps:
        assert changed_regions(before, after, SELECTORS) == regions, (before, after)


def test_a_burst_of_changes_costs_one_refresh() -> None:
    refreshes = RegionRefreshes()
    for _ in range(5):
        refreshes.mark_stale("eu-west-1")
    assert refreshes.take_stale("eu-west-1")
    assert not refreshes.take_stale("eu-west-1")  # the four others waiting find it fresh
    assert refreshes.lock("eu-west-1") is refreshes.lock("eu-west-1")


def test_a_failed_refresh_is_retried_on_the_next_node_event() -> None:
    refreshes = RegionRefreshes()
    regions = regions_of_node({"topology.kubernetes.io/region": "eu-west-1"}, SELECTORS)
    assert regions == {"eu-west-1"}
    assert refreshes.stale_among(regions) == set()
    assert not refreshes.any_stale
    refreshes.mark_stale("eu-west-1")  # a refresh that failed marks the region again
    assert refreshes.stale_among(regions) == {"eu-west-1"}
    assert refreshes.take_stale("eu-west-1")
    assert refreshes.stale_among(regions) == set()
