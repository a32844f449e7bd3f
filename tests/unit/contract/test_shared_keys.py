"""The chart's templates, the local fleet, the CRDs and the operator and router use the
contract's keys (issue 16, item 1): API group and kinds, the label prefix and managed-by
label, the engines' Prometheus label set, the pod annotations, the jurisdiction grammar."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from factory_contract import grammar, metrics, names
from factory_operator.api import common
from factory_operator.plan import OperatorSettings
from factory_operator.plan.workload import label_key
from factory_router.discovery import kube, kube_watch
from factory_router.policy import tenants
from factoryctl import report
from factoryctl.agents import engines
from factoryctl.components import resources
from factoryctl.components.stages import ENGINE_READY_ANNOTATION
from tests.unit.chart.chart_tools import helm_template, of_kind
from tests.unit.contract.fleet_world import FACTORIES, LOCAL_REGIONS, plan_of

ROOT = Path(__file__).resolve().parents[3]
CRD_DIRS = (ROOT / "crds", ROOT / "charts" / "inference-factory" / "files" / "crds")
MONITORING_API = ("--api-versions", "monitoring.coreos.com/v1")
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def chart() -> list[Obj]:
    """The chart with every template that names a shared key rendered."""
    return helm_template(
        *MONITORING_API,
        "--set",
        "monitoring.enginePodMonitor.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
    )


def test_chart_podmonitor_relabels_the_contract_label_set(chart: list[Obj]) -> None:
    [monitor] = [
        m for m in of_kind(chart, "PodMonitor") if m["metadata"]["name"].endswith("engines")
    ]
    assert monitor["spec"]["selector"] == {
        "matchLabels": {names.MANAGED_BY_LABEL: names.MANAGED_BY}
    }
    relabel = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert [r for r in relabel if "targetLabel" in r] == metrics.podmonitor_relabelings()


def test_chart_selects_engines_by_the_contract_managed_by_label(chart: list[Obj]) -> None:
    selectors = [
        peer["podSelector"]["matchLabels"]
        for policy in of_kind(chart, "NetworkPolicy")
        for rule in policy["spec"].get("egress", [])
        for peer in rule.get("to", [])
        if names.MANAGED_BY_LABEL in (peer.get("podSelector") or {}).get("matchLabels", {})
    ]
    assert selectors and all(s == {names.MANAGED_BY_LABEL: names.MANAGED_BY} for s in selectors)


def test_chart_rbac_and_crds_name_the_contract_group_and_kinds(chart: list[Obj]) -> None:
    plurals = {names.FACTORY_PLURAL, names.REGION_PLURAL}
    ours = [
        rule
        for role in of_kind(chart, "ClusterRole") + of_kind(chart, "Role")
        for rule in role.get("rules") or []
        if any("factory" in g for g in rule.get("apiGroups", []))
    ]
    assert ours
    for rule in ours:
        assert rule["apiGroups"] == [names.GROUP]
        assert {r.split("/")[0] for r in rule["resources"]} <= plurals
    crds = of_kind(chart, "CustomResourceDefinition")
    assert {(c["spec"]["group"], c["spec"]["names"]["kind"], c["spec"]["names"]["plural"])
            for c in crds} == {(names.GROUP, names.FACTORY_KIND, names.FACTORY_PLURAL),
                               (names.GROUP, names.REGION_KIND, names.REGION_PLURAL)}  # fmt: skip
    assert {v["name"] for c in crds for v in c["spec"]["versions"]} == {names.VERSION}


def test_chart_uses_no_prefixed_key_the_contract_lacks(chart: list[Obj]) -> None:
    known = {
        names.prefixed(k)
        for k in (
            names.FACTORY_LABEL, names.POOL_LABEL, names.REGION_LABEL,
            names.JURISDICTION_LABEL, names.REVISION_LABEL, names.ADDRESS_ANNOTATION,
            names.ENGINE_READY_ANNOTATION, names.SIM_BEHAVIOUR_ANNOTATION, names.TRACK_LABEL,
        )
    }  # fmt: skip
    text = yaml.safe_dump_all(chart)
    used = set(re.findall(re.escape(names.DEFAULT_PREFIX) + r"/[a-z-]+", text))
    assert used <= known


@pytest.mark.parametrize("prefix", [names.DEFAULT_PREFIX, "example.org"])
def test_the_operator_podmonitors_and_labels_follow_its_prefix(prefix: str) -> None:
    settings = OperatorSettings(annotation_prefix=prefix)
    assert label_key(settings, names.POOL_LABEL) == f"{prefix}/{names.POOL_LABEL}"
    children = plan_of(FACTORIES[0], LOCAL_REGIONS, settings, running=None).apply
    monitors = [c for c in children if c["kind"] == "PodMonitor"]
    assert monitors
    for monitor in monitors:
        relabel = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
        assert relabel == metrics.podmonitor_relabelings(prefix)
        slug = prefix.replace(".", "_")
        assert relabel[1]["sourceLabels"] == [f"__meta_kubernetes_pod_label_{slug}_pool"]
    for deployment in (c for c in children if c["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels[names.MANAGED_BY_LABEL] == names.MANAGED_BY
        assert {names.prefixed(k, prefix) for k in metrics.POOL_SERIES_LABELS} <= set(labels)
    assert OperatorSettings().annotation_prefix == names.DEFAULT_PREFIX


@pytest.mark.parametrize("prefix", [names.DEFAULT_PREFIX, "example.org"])
def test_local_fleet_scrape_targets_carry_the_contract_label_set(prefix: str) -> None:
    pod = {
        "metadata": {
            "name": "llama-eu-0",
            "namespace": "ml",
            "labels": {
                names.prefixed(names.FACTORY_LABEL, prefix): "llama",
                names.prefixed(names.POOL_LABEL, prefix): "eu",
                names.prefixed(names.REGION_LABEL, prefix): "eu-west-1",
                names.prefixed(names.JURISDICTION_LABEL, prefix): "EU",
            },
        }
    }
    target = engines.scrape_target(pod, 41000, prefix)
    assert target["labels"] == {
        "namespace": "ml", "pod": "llama-eu-0", "factory": "llama", "pool": "eu",
        "region": "eu-west-1", "jurisdiction": "EU",
    }  # fmt: skip
    assert tuple(target["labels"]) == metrics.SERIES_LABELS


def test_annotations_and_selectors_are_the_contract_ones() -> None:
    assert engines.MANAGED == kube.MANAGED_BY_SELECTOR == names.MANAGED_BY_SELECTOR
    assert engines.ADDRESS_ANNOTATION == kube.ADDRESS_ANNOTATION == "inference.factory.dev/address"
    assert engines.READY_ANNOTATION == ENGINE_READY_ANNOTATION
    assert names.prefixed(names.ENGINE_READY_ANNOTATION) == engines.READY_ANNOTATION
    assert names.prefixed(names.SIM_BEHAVIOUR_ANNOTATION) == engines.BEHAVIOUR_ANNOTATION
    assert (kube_watch.GROUP, kube_watch.VERSION) == (names.GROUP, names.VERSION)
    assert (common.GROUP, common.VERSION, common.API_VERSION) == (
        names.GROUP, names.VERSION, names.API_VERSION,
    )  # fmt: skip


def test_the_local_fleets_other_copies_agree_with_the_contract() -> None:
    """What the local fleet's CLI still spells itself (outside the engines agent)."""
    assert set(resources.CRD_NAMES) == {
        f"{names.REGION_PLURAL}.{names.GROUP}",
        f"{names.FACTORY_PLURAL}.{names.GROUP}",
    }
    assert report.LABEL == names.DEFAULT_PREFIX


def _patterns(node: Any, key: str) -> list[str]:
    """Every ``pattern`` of a property named ``key`` (or of its items) in a CRD schema."""
    found: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, dict):
                found += [p for p in (v.get("pattern"), (v.get("items") or {}).get("pattern")) if p]
            found += _patterns(v, key)
    elif isinstance(node, list):
        for v in node:
            found += _patterns(v, key)
    return found


@pytest.mark.parametrize("crds", CRD_DIRS, ids=lambda p: str(p.relative_to(ROOT)))
def test_crds_use_the_contract_jurisdiction_grammar(crds: Path) -> None:
    found = [
        pattern
        for path in sorted(crds.glob("*.yaml"))
        for key in ("jurisdiction", "jurisdictions")
        for pattern in _patterns(yaml.safe_load(path.read_text()), key)
    ]
    assert found and set(found) == {grammar.JURISDICTION}


@pytest.mark.parametrize(
    ("code", "valid"),
    [("EU", True), ("us", True), (" IN ", True), ("APAC", True), ("EU27", True),
     ("E", False), ("EU_WEST", False), ("EU-WEST", False), ("TOOLONGXX", False),
     ("1EU", False), ("*", False), ("", False)],
)  # fmt: skip
def test_one_jurisdiction_grammar_in_the_router_and_the_operator(code: str, valid: bool) -> None:
    try:
        tenants.normalise_jurisdiction(code)
        router_ok = True
    except ValueError:
        router_ok = False
    operator_ok = re.match(common.JURISDICTION, code.strip().upper()) is not None
    assert router_ok == operator_ok == valid
