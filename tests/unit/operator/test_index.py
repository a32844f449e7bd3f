"""FactoryIndex: which node events change a region's status, and refresh coalescing."""

from __future__ import annotations

from factory_operator.handlers.index import FactoryIndex
from factory_operator.plan import NodeInfo

GPUS = {"nvidia.com/gpu": 8}


def node(region: str, *, ready: bool = True, gpus: int = 8) -> NodeInfo:
    labels = {"topology.kubernetes.io/region": region}
    return NodeInfo("n0", labels, {"nvidia.com/gpu": gpus}, ready=ready)


def index() -> FactoryIndex:
    idx = FactoryIndex()
    for r in ("eu-west-1", "eu-central-1"):
        idx.set_region_selector(r, {"topology.kubernetes.io/region": r})
    return idx


def test_only_changed_node_facts_touch_a_region() -> None:
    idx = index()
    assert idx.node_changed("n0", node("eu-west-1")) == {"eu-west-1"}  # first seen
    assert idx.node_changed("n0", node("eu-west-1")) == set()  # a heartbeat
    assert idx.node_changed("n0", node("eu-west-1", ready=False)) == {"eu-west-1"}
    assert idx.node_changed("n0", node("eu-west-1", ready=False, gpus=4)) == {"eu-west-1"}
    # Relabelled into another region: both statuses change.
    assert idx.node_changed("n0", node("eu-central-1")) == {"eu-west-1", "eu-central-1"}
    assert idx.node_changed("n0", None) == {"eu-central-1"}  # deleted
    assert idx.node_changed("n0", None) == set()  # deleted twice (a relist)
    assert idx.node_changed("n1", NodeInfo("n1", {"other": "x"}, GPUS)) == set()


def test_a_burst_of_changes_costs_one_refresh() -> None:
    idx = index()
    for _ in range(5):
        idx.mark_region_stale("eu-west-1")
    assert idx.take_stale("eu-west-1")
    assert not idx.take_stale("eu-west-1")  # the four others waiting find it fresh
    assert idx.region_lock("eu-west-1") is idx.region_lock("eu-west-1")


def test_a_failed_refresh_is_retried_on_the_next_node_event() -> None:
    idx = index()
    labels = {"topology.kubernetes.io/region": "eu-west-1"}
    assert idx.stale_regions_of_node(labels) == set()
    idx.mark_region_stale("eu-west-1")  # a refresh that failed marks the region again
    assert idx.stale_regions_of_node(labels) == {"eu-west-1"}
    assert idx.take_stale("eu-west-1")
    assert idx.stale_regions_of_node(labels) == set()
