"""The PrometheusRule carries the alerts of the components the release runs: the router's
(rules labelled component: router) only with router.enabled, the operator's (component:
operator) only with operator.enabled, the shared ones (engines, SLOs) always. Otherwise a
cluster without a router would page InferenceRouterAbsent for ever."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.unit.chart.chart_tools import MONITORING, helm_template, of_kind

MONITORING_API = ("--api-versions", "monitoring.coreos.com/v1")
SOURCE = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
RULES = [r for g in SOURCE["groups"] for r in g["rules"]]


def _name(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule["record"])


def _component(rule: dict[str, Any]) -> str | None:
    return (rule.get("labels") or {}).get("component")


def _rendered(*args: str) -> set[str]:
    (rule,) = of_kind(helm_template(*MONITORING_API, *args), "PrometheusRule")
    assert all(group["rules"] for group in rule["spec"]["groups"]), "no empty group"
    return {_name(r) for g in rule["spec"]["groups"] for r in g["rules"]}


def test_every_rule_on_a_components_metrics_is_marked_with_it() -> None:
    """The marker follows the metrics: a new alert on router or operator series without it
    would be shipped to clusters that do not run that component."""
    for rule in RULES:
        expr = str(rule["expr"])
        router = re.search(r'factory_router_|job="factory-router"', expr)
        operator = re.search(r'factory_operator_|job="factory-operator"', expr)
        expected = "router" if router else "operator" if operator else None
        assert not (router and operator), _name(rule)
        assert _component(rule) == expected, _name(rule)


@pytest.mark.parametrize(
    ("args", "dropped"),
    [
        ((), set()),
        (("--set", "router.enabled=false"), {"router"}),
        (("--set", "operator.enabled=false"), {"operator"}),
    ],
    ids=["both", "no-router", "no-operator"],
)
def test_only_enabled_components_alerts_are_rendered(
    args: tuple[str, ...], dropped: set[str]
) -> None:
    rendered = _rendered(*args)
    assert rendered == {_name(r) for r in RULES if _component(r) not in dropped}
    if "router" in dropped:
        assert "InferenceRouterAbsent" not in rendered
        assert {"InferenceFactoryOperatorAbsent", "InferenceTTFTBudgetBurnFast"} <= rendered
