"""Scale from zero across the router and the operator (issue 17, item 3): the demand the router
holds reaches the one pool it is counted on, and only that pool wakes.

The router's own collector (`factory_router.app.hold.Holds`) produces the series; the
operator's PromQL (`k8s.load.queries`) aggregates it `sum by (pool)` over the factory's
`namespace` and `factory`; here that aggregation is done on the collector's samples, so a
renamed metric or label on either side fails this test.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from conftest import REGIONS, factory, pool

from factory_operator.api import InferenceFactory
from factory_operator.k8s.load import PENDING_METRIC, loads_from_results, queries
from factory_operator.plan.observed import DeploymentInfo
from factory_operator.plan.scaling import autoscale_pools
from factory_router.app.hold import Holds
from factory_router.policy.config import HoldConfig
from factory_router.policy.hold import PendingKey

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def _factory() -> InferenceFactory:
    def at_zero(name: str, region: str) -> dict[str, Any]:
        return {**pool(name, region), "replicas": {"min": 0, "max": 2}}

    f = factory(
        [at_zero("dub", "eu-west-1"), at_zero("fra", "eu-central-1"), at_zero("iad", "us-east-1")],
        residency=["EU", "US"],
        engine={"args": {"maxNumSeqs": 8}},
    )
    body = f.to_wire()
    body["spec"]["autoscaling"] = {}
    return InferenceFactory.model_validate(body)


def _pending_by_pool(holds: Holds, namespace: str, factory_name: str) -> list[dict[str, Any]]:
    """`sum by (pool) (factory_router_pending_requests{namespace=..., factory=...})` on what
    the router's collector exports, in the shape Prometheus answers."""
    sums: dict[str, float] = defaultdict(float)
    for family in holds.collect():
        if family.name != PENDING_METRIC:
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels["namespace"] == namespace and labels["factory"] == factory_name:
                sums[labels["pool"]] += sample.value
    return [{"metric": {"pool": p}, "value": [0, str(v)]} for p, v in sums.items()]


def test_the_pool_the_router_counts_held_requests_on_wakes_and_no_other() -> None:
    f = _factory()
    namespace, name = f.metadata.namespace, f.metadata.name
    assert namespace is not None
    assert (
        f'{PENDING_METRIC}{{namespace="{namespace}", factory="{name}"}}'
        in (queries(namespace, name)["pending"])
    )
    holds = Holds(HoldConfig())
    held = PendingKey(namespace, name, "fra", "eu-central-1", "EU", "llama-3.1-8b")
    elsewhere = PendingKey("other", name, "dub", "eu-west-1", "EU", "llama-3.1-8b")
    for key in (held, held, elsewhere):  # another namespace's factory of the same name
        assert holds.book.admit(key)

    loads = loads_from_results({"pending": _pending_by_pool(holds, namespace, name)})
    deployments = {p: DeploymentInfo(f"{name}-{p}", p, 0) for p in ("dub", "fra", "iad")}
    plan = autoscale_pools(f, REGIONS, deployments, loads, NOW)
    got = {p: (s.desired, s.status.reason) for p, s in plan.pools.items()}
    assert got == {
        "fra": (1, "ScaleFromZero"),
        "dub": (0, "ScaledToZero"),
        "iad": (0, "ScaledToZero"),
    }
    assert [(e.reason, "pool fra: 0 -> 1" in e.message) for e in plan.events] == [
        ("ScaledUp", True)
    ]

    # Served: the series is gone, and an idle pool at zero stays there.
    holds.book.release(held)
    holds.book.release(held)
    quiet = loads_from_results({"pending": _pending_by_pool(holds, namespace, name)})
    assert quiet == {}
    still = autoscale_pools(f, REGIONS, deployments, quiet, NOW)
    assert {p: s.desired for p, s in still.pools.items()} == {"dub": 0, "fra": 0, "iad": 0}
