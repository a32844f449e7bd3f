"""A pool's rollout never leaves it with fewer serving replicas than it runs when its spec
allows one more replica (issue 18); a pool held at its max stays within its accelerators."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import NODES, NOW, REGIONS, factory, pool

from factory_operator.plan import Observed, OperatorSettings, plan_factory
from factory_operator.plan.workload import rolling_update


def _rolling_update(replicas: dict[str, int], settings: OperatorSettings) -> dict[str, Any]:
    f = factory([{**pool("h100", "eu-west-1"), "replicas": replicas}])
    plan = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES), settings)
    dep = next(c for c in plan.apply if c["kind"] == "Deployment")
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    update: dict[str, Any] = dep["spec"]["strategy"]["rollingUpdate"]
    return update


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        ({"min": 1, "max": 2}, {"maxSurge": 1, "maxUnavailable": 0}),
        ({"min": 2, "max": 4}, {"maxSurge": 1, "maxUnavailable": 0}),
        ({"min": 0, "max": 1}, {"maxSurge": 1, "maxUnavailable": 0}),
        ({"min": 1, "max": 1}, {"maxSurge": 0, "maxUnavailable": 1}),
        ({"min": 3, "max": 3}, {"maxSurge": 0, "maxUnavailable": 1}),
    ],
)
def test_surge_when_the_spec_allows_one_more(
    replicas: dict[str, int], expected: dict[str, int], settings: OperatorSettings
) -> None:
    assert _rolling_update(replicas, settings) == expected


def test_a_count_set_later_is_judged_against_the_ceiling() -> None:
    # The autoscaler runs a pool above min: the surge depends on the count it runs.
    assert rolling_update(3, 4) == {"maxSurge": 1, "maxUnavailable": 0}
    assert rolling_update(4, 4) == {"maxSurge": 0, "maxUnavailable": 1}
