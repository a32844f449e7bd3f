"""NetworkPolicy gaps found in review: a router peer without any address (an empty `to`
matches every destination) and the operator's autoscaler, which reads Prometheus."""

from __future__ import annotations

import json

from tests.unit.chart.chart_tools import (
    API_SERVER_CIDRS,
    CHART,
    Obj,
    by_name,
    helm_template,
    helm_template_error,
)

PEER_WITHOUT_ADDRESS = (
    "--set", "networkPolicy.routerPeers[0].name=us",
    "--set", "networkPolicy.routerPeers[0].ports={443}",
)  # fmt: skip
PROMETHEUS_URL = ("--set", "operator.prometheusUrl=http://prometheus-operated.monitoring:9090")


def _egress(objs: list[Obj], component: str) -> list[Obj]:
    rules: list[Obj] = by_name(objs, "NetworkPolicy", component)["spec"]["egress"]
    return rules


def test_schema_refuses_a_peer_without_an_address() -> None:
    err = helm_template_error(*API_SERVER_CIDRS, "--set", "router.region=x", *PEER_WITHOUT_ADDRESS)
    assert "values don't meet the specifications of the schema" in err
    assert "/networkPolicy/routerPeers/0" in err
    assert "cidrs" in err
    # Empty ones are no address either.
    for empty in ("cidrs=[]", "namespaceLabels=null", "podLabels=null"):
        err = helm_template_error(
            *API_SERVER_CIDRS, "--set", "router.region=x", *PEER_WITHOUT_ADDRESS,
            "--set-json", f"networkPolicy.routerPeers[0].{empty.replace('null', '{}')}",
        )  # fmt: skip
        assert "/networkPolicy/routerPeers/0" in err, empty


def test_template_refuses_a_peer_without_an_address_without_the_schema() -> None:
    """The template's own guard, for renders that skip the schema (--skip-schema-validation)."""
    err = helm_template_error(
        *API_SERVER_CIDRS, "--set", "router.region=x", *PEER_WITHOUT_ADDRESS,
        "--skip-schema-validation",
    )  # fmt: skip
    assert "networkPolicy.routerPeers[0] (us) has no address" in err


def test_every_peer_rule_has_a_destination() -> None:
    for peer in (
        ("--set", "networkPolicy.routerPeers[0].cidrs={198.51.100.10/32}"),
        ("--set", "networkPolicy.routerPeers[0].podLabels.app=router"),
        ("--set", "networkPolicy.routerPeers[0].namespaceLabels.team=fleet"),
    ):
        rules = _egress(helm_template(*PEER_WITHOUT_ADDRESS, *peer), "router")
        assert all(rule.get("to") for rule in rules), rules


def test_operator_reaches_prometheus_only_when_it_reads_it() -> None:
    operator = _egress(helm_template(), "operator")
    assert {p["port"] for rule in operator for p in rule["ports"]} == {53, 443, 6443}
    reading = _egress(helm_template(*PROMETHEUS_URL), "operator")
    router = _egress(helm_template(*PROMETHEUS_URL), "router")
    prometheus = {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ],
        "ports": [{"port": 9090, "protocol": "TCP"}],
    }
    assert prometheus in reading
    assert prometheus in router  # the same peer and port as the router's load queries
    assert len(reading) == len(operator) + 1
    elsewhere = (
        "--set", "networkPolicy.prometheus.port=9009",
        "--set", "networkPolicy.prometheus.podLabels.app=thanos-query",
    )  # fmt: skip
    custom = _egress(helm_template(*PROMETHEUS_URL, *elsewhere), "operator")
    assert '"port": 9009' in json.dumps(custom)
    assert '"app": "thanos-query"' in json.dumps(custom)


def test_readme_says_what_the_operator_may_reach() -> None:
    readme = (CHART / "README.md").read_text()
    section = readme.split("NetworkPolicies deny everything", 1)[1].split("\n## ", 1)[0]
    assert "operator.prometheusUrl" in section
    assert "at least\n  one of these addresses" in section
