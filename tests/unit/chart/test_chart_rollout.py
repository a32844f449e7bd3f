"""The rollout gates' wiring in the chart (operator.rollout): the operator's --router-url and
--rollout-interval, its router admin key only through a secretKeyRef, `get` on ConfigMaps
(golden prompts) in the namespaces it watches, and the NetworkPolicies between the operator
and the router it sends golden prompts to."""

from __future__ import annotations

import json

from tests.unit.chart.chart_tools import (
    CHART,
    Obj,
    by_name,
    helm_template,
    helm_template_error,
    of_kind,
)

ADMIN_KEY_ENV = "FACTORY_OPERATOR_ROUTER_ADMIN_KEY"
ROLLOUT = (
    "--set", "operator.rollout.adminKeySecret.name=rollout-gates-key",
    "--set", "operator.rollout.adminKeySecret.key=admin",
    "--set", "operator.rollout.interval=5",
)  # fmt: skip
OWN_ROUTER = "http://fleet-inference-factory-router.inference-factory.svc:80"


def _operator(objs: list[Obj]) -> Obj:
    container: Obj = by_name(objs, "Deployment", "operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def _env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env") or []}


def _egress_to_router(objs: list[Obj]) -> list[Obj]:
    rules = by_name(objs, "NetworkPolicy", "operator")["spec"]["egress"]
    return [
        r for r in rules
        if any(
            peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
            == "router"
            for peer in r.get("to", [])
        )
    ]  # fmt: skip


def test_operator_args_and_admin_key_from_the_secret() -> None:
    objs = helm_template(*ROLLOUT)
    operator = _operator(objs)
    assert f"--router-url={OWN_ROUTER}" in operator["args"]
    assert "--rollout-interval=5" in operator["args"]
    assert not any("admin-key" in a for a in operator["args"])
    assert _env(operator)[ADMIN_KEY_ENV] == {
        "name": ADMIN_KEY_ENV,
        "valueFrom": {"secretKeyRef": {"name": "rollout-gates-key", "key": "admin"}},
    }
    # The URL names the router Service this release renders, on its port.
    service = by_name(objs, "Service", "router")
    assert service["metadata"]["name"] == "fleet-inference-factory-router"
    assert service["spec"]["ports"][0]["port"] == 80


def test_defaults_own_router_no_key() -> None:
    operator = _operator(helm_template())
    assert f"--router-url={OWN_ROUTER}" in operator["args"]
    assert "--rollout-interval=10" in operator["args"]
    assert ADMIN_KEY_ENV not in _env(operator)
    assert "env" not in operator  # nothing else sets one by default


def test_router_url_given_or_none_without_the_router() -> None:
    given = _operator(helm_template(
        *ROLLOUT, "--set", "operator.rollout.routerUrl=http://router.fleet.example:8080"
    ))  # fmt: skip
    assert "--router-url=http://router.fleet.example:8080" in given["args"]
    alone = _operator(helm_template(*ROLLOUT, "--set", "router.enabled=false"))
    assert not any(a.startswith("--router-url") for a in alone["args"])
    assert ADMIN_KEY_ENV in _env(alone)  # a routerUrl may still be given


def test_schema_refuses_a_plain_key_and_a_bad_interval() -> None:
    base = ("--set", "router.region=x", "--set", "networkPolicy.apiServer.cidrs={10.96.0.1/32}")
    for setting, where in [
        ("operator.rollout.adminKey=secret", "/operator/rollout"),
        ("operator.rollout.adminKeySecret.value=secret", "/operator/rollout/adminKeySecret"),
        ("operator.rollout.interval=0", "/operator/rollout/interval"),
        ("operator.rollout.routerUrl=router:8080", "/operator/rollout/routerUrl"),
    ]:
        err = helm_template_error(*base, "--set", setting)
        assert "values don't meet the specifications of the schema" in err, setting
        assert where in err, (setting, err)


def test_operator_gets_configmaps_where_it_watches() -> None:
    objs = helm_template()
    workloads = by_name(objs, "ClusterRole", "operator-workloads")
    configmaps = [r for r in workloads["rules"] if "configmaps" in r["resources"]]
    assert configmaps == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    cluster = by_name(objs, "ClusterRole", "operator")
    assert not any("configmaps" in r["resources"] for r in cluster["rules"])
    # With watchNamespaces the workload role (ConfigMaps included) is bound there only.
    namespaced = helm_template("--set", "operator.watchNamespaces={inference}")
    bound = [b["metadata"]["namespace"] for b in of_kind(namespaced, "RoleBinding")
             if b["roleRef"]["name"].endswith("operator-workloads")]  # fmt: skip
    assert bound == ["inference"]


def test_network_policies_let_the_gates_reach_their_router() -> None:
    assert not _egress_to_router(helm_template())  # no key: the operator never asks it
    objs = helm_template(*ROLLOUT, "--set", "networkPolicy.routerIngress.cidrs={10.20.0.0/16}")
    (egress,) = _egress_to_router(objs)
    assert egress["ports"] == [{"port": 8080, "protocol": "TCP"}]  # the pods' port
    api = by_name(objs, "NetworkPolicy", "router")["spec"]["ingress"][0]
    components = [p["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
                  for p in api["from"] if "podSelector" in p]  # fmt: skip
    assert "operator" in components
    elsewhere = helm_template(
        *ROLLOUT, "--set", "operator.rollout.routerUrl=http://router.fleet.example:8080"
    )
    assert not _egress_to_router(elsewhere)
    assert "0.0.0.0/0" not in json.dumps([p["spec"] for p in of_kind(objs, "NetworkPolicy")])


def test_readme_says_how_to_wire_the_gates() -> None:
    readme = (CHART / "README.md").read_text()
    section = readme.split("## Rollout gates", 1)[1].split("\n## ", 1)[0]
    for needed in ("admin: true", "jurisdictions", "operator.rollout.adminKeySecret",
                   "secretKeyRef", "goldenPromptsFrom"):  # fmt: skip
        assert needed in section, needed
