"""Values the schema must refuse before they reach a manifest: names that are no DNS-1123
label, label values Kubernetes refuses, API server addresses that are no CIDR."""

from __future__ import annotations

import pytest

from tests.unit.chart.chart_tools import helm_template, helm_template_error

SCHEMA_ERROR = "values don't meet the specifications of the schema"


API_CIDR = "/networkPolicy/apiServer/cidrs/0"


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("fullnameOverride=My_Release", "/fullnameOverride"),
        ("fullnameOverride=-fleet", "/fullnameOverride"),
        ("nameOverride=Factory", "/nameOverride"),
        ("commonLabels.team=platform team", "/commonLabels/team"),
        ("commonLabels.team=-platform", "/commonLabels/team"),
        # propertyNames errors name the key, not a path
        ("commonLabels.Bad Key=x", "invalid propertyName 'Bad Key'"),
        ("networkPolicy.apiServer.cidrs={10.0.0.1}", API_CIDR),
        ("networkPolicy.apiServer.cidrs={api.example.com}", API_CIDR),
        ("networkPolicy.apiServer.cidrs={10.0.0.256/32}", API_CIDR),
        ("networkPolicy.routerIngress.cidrs={10.0.0.0/33}", "/networkPolicy/routerIngress/cidrs/0"),
    ],
)
def test_schema_refuses(setting: str, where: str) -> None:
    err = helm_template_error("--set", "router.region=x", "--set", setting)
    assert SCHEMA_ERROR in err
    assert where in err, err


def test_schema_accepts_valid_names_labels_and_cidrs() -> None:
    helm_template(
        "--set", "fullnameOverride=fleet-eu-1",
        "--set", "commonLabels.team=platform_team.eu-1",
        "--set", "commonLabels.example\\.com/owner=",
        "--set", "networkPolicy.apiServer.cidrs={10.0.0.0/16,172.20.0.1/32,fd00:10:96::1/128}",
        base=("--set", "router.region=x"),
    )  # fmt: skip
