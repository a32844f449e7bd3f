"""The Helm chart through the pinned helm binary (no cluster): lint, renders under each
capability and toggle, values schema errors, least-privilege RBAC and Pod Security
`restricted` on every pod. Fails (never skips) when the toolchain is not built."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.unit.chart.chart_tools import (
    API_SERVER_CIDRS,
    BASE_SET,
    CHART,
    ROOT,
    Obj,
    by_name,
    helm_template,
    helm_template_error,
    of_kind,
    run,
    toolchain,
)
from tools import sync_chart

MONITORING_API = ("--api-versions", "monitoring.coreos.com/v1")
PROMETHEUS_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# Volume types the `restricted` Pod Security level allows (kubernetes.io/docs, Pod Security
# Standards, "Volume Types").
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


@pytest.mark.parametrize(
    "extra",
    [
        (),
        (
            "--set",
            "operator.watchNamespaces={inference}",
            "--set",
            "monitoring.enginePodMonitor.enabled=true",
        ),
    ],
    ids=["defaults", "namespaced"],
)
def test_lint_strict(extra: tuple[str, ...]) -> None:
    done = run([str(toolchain().helm), "lint", "--strict", str(CHART), *extra])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_default_render_kinds() -> None:
    kinds = sorted(o["kind"] for o in helm_template())
    assert kinds == sorted(
        ["CustomResourceDefinition"] * 2
        + ["ServiceAccount"] * 2
        + ["ClusterRole"] * 3
        + ["ClusterRoleBinding"] * 3
        + ["Deployment"] * 2
        + ["Service"] * 3  # the operator's metrics, the router's API and its admin port
        + ["PodDisruptionBudget"] * 2
        + ["NetworkPolicy"] * 4  # default deny, operator, router, the `helm test` Pod
        + ["ConfigMap"] * 5  # the dashboards
        + ["Pod"]  # the `helm test` hook
    )
    hook = of_kind(helm_template(), "Pod")[0]["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == "test"


def test_prometheus_operator_resources_only_with_its_api() -> None:
    assert not PROMETHEUS_KINDS & {o["kind"] for o in helm_template()}
    objs = helm_template(*MONITORING_API)
    assert len(of_kind(objs, "ServiceMonitor")) == 2
    assert len(of_kind(objs, "PrometheusRule")) == 1
    # The engine PodMonitor is opt-in: the operator makes one per pool.
    assert not of_kind(objs, "PodMonitor")
    off = helm_template(
        *MONITORING_API,
        "--set",
        "monitoring.serviceMonitors.enabled=false",
        "--set",
        "monitoring.prometheusRule.enabled=false",
    )
    assert not PROMETHEUS_KINDS & {o["kind"] for o in off}


def test_prometheus_rule_carries_every_alert() -> None:
    rule = of_kind(helm_template(*MONITORING_API), "PrometheusRule")[0]
    source = yaml.safe_load((ROOT / "deploy" / "monitoring" / "alerts.yaml").read_text())
    assert rule["spec"] == source


def test_engine_podmonitor_gives_the_fleet_label_set() -> None:
    objs = helm_template(*MONITORING_API, "--set", "monitoring.enginePodMonitor.enabled=true")
    monitor = of_kind(objs, "PodMonitor")[0]["spec"]
    assert monitor["selector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "inference-factory"}
    }
    endpoint = monitor["podMetricsEndpoints"][0]
    assert endpoint["port"] == "http"
    relabel = endpoint["relabelings"]
    targets = {r["targetLabel"]: r["sourceLabels"] for r in relabel if "targetLabel" in r}
    assert targets == {
        k: [f"__meta_kubernetes_pod_label_inference_factory_dev_{k}"]
        for k in ("factory", "pool", "region", "jurisdiction")
    }
    # namespace and pod come from the Prometheus Operator; its other target labels go.
    assert {"action": "labeldrop", "regex": "container|endpoint"} in relabel


def test_dashboards_are_configmaps_for_the_grafana_sidecar() -> None:
    maps = of_kind(helm_template(), "ConfigMap")
    assert len(maps) == 5
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = cm["data"].items()
        assert json.loads(text) == json.loads(
            (ROOT / "deploy" / "monitoring" / "dashboards" / name).read_text()
        )


def test_crds_are_kept_on_uninstall_and_optional() -> None:
    crds = of_kind(helm_template(), "CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in crds} == {
        "fleetregions.inference.factory.dev",
        "inferencefactories.inference.factory.dev",
    }
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not of_kind(helm_template("--set", "crds.install=false"), "CustomResourceDefinition")


def test_components_can_be_turned_off() -> None:
    only_router = helm_template("--set", "operator.enabled=false")
    names = [d["metadata"]["name"] for d in of_kind(only_router, "Deployment")]
    assert names == ["fleet-inference-factory-router"]
    assert all(
        "operator" not in o["metadata"]["name"]
        for o in only_router
        if o["kind"] != "CustomResourceDefinition"
    )
    only_operator = helm_template("--set", "router.enabled=false", base=API_SERVER_CIDRS)
    names = [d["metadata"]["name"] for d in of_kind(only_operator, "Deployment")]
    assert names == ["fleet-inference-factory-operator"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--set", "operator.regoin=eu-west-1"), "regoin"),
        (("--set", "router.tenants.existingSecrett=x"), "existingSecrett"),
        (("--set", "router.replicas=two"), "replicas"),
        (("--set-json", 'operator.watchNamespaces="inference"'), "watchNamespaces"),
        (("--set", "router.policy=fastest"), "policy"),
    ],
    ids=[
        "misspelled-key",
        "misspelled-nested-key",
        "wrong-type-int",
        "wrong-type-list",
        "not-in-enum",
    ],
)
def test_values_schema_refuses(args: tuple[str, ...], expected: str) -> None:
    err = helm_template_error("--set", "router.region=eu-west-1", *args)
    assert "values don't meet the specifications of the schema" in err
    assert expected in err


def test_values_schema_refuses_a_values_file(tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('router:\n  region: eu-west-1\n  replicas: "2"\noperatr:\n  enabled: true\n')
    err = helm_template_error("-f", str(bad))
    assert "operatr" in err
    assert "replicas" in err


def test_router_region_is_required() -> None:
    err = helm_template_error(*API_SERVER_CIDRS)
    assert "router.region is required" in err
    # operator.region is its default (one cluster per region)
    objs = helm_template("--set", "operator.region=us-east-1", base=API_SERVER_CIDRS)
    env = by_name(objs, "Deployment", "router")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "FACTORY_ROUTER_REGION", "value": "us-east-1"} in env


def test_router_pdb_must_allow_an_eviction() -> None:
    err = helm_template_error(*BASE_SET, "--set", "router.replicas=1")
    assert "router.pdb.minAvailable (1) must be lower than router.replicas (1)" in err


def test_router_mounts_the_tenants_secret_without_subpath() -> None:
    objs = helm_template(
        "--set", "router.tenants.existingSecret=acme", "--set", "router.tenants.key=policy.yaml"
    )
    pod = by_name(objs, "Deployment", "router")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tenants")
    assert volume["secret"]["secretName"] == "acme"
    assert volume["secret"]["items"] == [{"key": "policy.yaml", "path": "tenants.yaml"}]
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tenants")
    assert "subPath" not in mount  # kubelet updates the file: rotation without restart
    assert f"--tenants={mount['mountPath']}/tenants.yaml" in container["args"]


def test_router_endpoint_key_is_mounted_only_when_set() -> None:
    pod = by_name(helm_template(), "Deployment", "router")["spec"]["template"]["spec"]
    assert not any(a.startswith("--endpoint-key-file") for a in pod["containers"][0]["args"])
    assert all(v["name"] != "endpoint-key" for v in pod["volumes"])
    objs = helm_template("--set", "router.endpointKey.existingSecret=front-key")
    pod = by_name(objs, "Deployment", "router")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "endpoint-key")
    assert volume["secret"]["secretName"] == "front-key"
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "endpoint-key")
    assert "subPath" not in mount and mount["readOnly"]
    assert f"--endpoint-key-file={mount['mountPath']}/key" in container["args"]


def _rules(objs: list[Obj]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], rule)
        for o in objs
        if o["kind"] in ("ClusterRole", "Role")
        for rule in o.get("rules") or []
    ]


@pytest.mark.parametrize(
    "extra",
    [(), ("--set", "operator.watchNamespaces={inference,batch}")],
    ids=["clusterwide", "namespaced"],
)
def test_rbac_has_no_wildcard_and_no_versioned_group(extra: tuple[str, ...]) -> None:
    rules = _rules(helm_template(*extra))
    assert rules
    for name, rule in rules:
        for field in ("verbs", "resources", "apiGroups"):
            assert "*" not in rule[field], (name, rule)
            assert not any("*" in v for v in rule[field]), (name, rule)
        assert not any("/" in group for group in rule["apiGroups"]), (name, rule)
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_router_rbac_is_read_only() -> None:
    objs = helm_template()
    role = by_name(objs, "ClusterRole", "router")
    granted = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert granted == {
        ("inference.factory.dev", "fleetregions"): {"list", "watch"},
        ("inference.factory.dev", "inferencefactories"): {"list", "watch"},
        ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
        ("", "pods"): {"list", "watch"},
    }


def test_operator_rbac_is_what_the_code_uses() -> None:
    objs = helm_template()
    granted: dict[tuple[str, str], set[str]] = {}
    for name, rule in _rules(objs):
        if "operator" in name:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    granted.setdefault((g, r), set()).update(rule["verbs"])
    writes = {"create", "patch", "delete"}
    assert granted == {
        ("inference.factory.dev", "fleetregions"): {"list", "watch"},
        ("inference.factory.dev", "fleetregions/status"): {"patch"},
        ("", "nodes"): {"list", "watch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("inference.factory.dev", "inferencefactories"): {"list", "watch", "patch"},
        ("inference.factory.dev", "inferencefactories/status"): {"patch"},
        ("inference.factory.dev", "inferencefactories/finalizers"): {"update"},
        ("apps", "deployments"): {"list", "watch"} | writes,
        # Watched (kopf indexes, handlers/indexes.py): a converged reconcile lists nothing.
        ("", "services"): {"list", "watch"} | writes,
        ("policy", "poddisruptionbudgets"): {"list", "watch"} | writes,
        ("monitoring.coreos.com", "podmonitors"): {"list", "watch"} | writes,
        ("apps", "replicasets"): {"list", "watch"},
        ("", "pods"): {"list", "watch"},
        ("", "persistentvolumeclaims"): {"list", "watch"},
        ("", "events"): {"create"},
        # Golden prompts from the ConfigMap a factory names (k8s/gates.py), read by name.
        ("", "configmaps"): {"get"},
    }


def test_namespaced_operator_is_bound_per_namespace() -> None:
    objs = helm_template("--set", "operator.watchNamespaces={inference,batch}")
    bindings = of_kind(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["batch", "inference"]
    assert all(b["roleRef"]["name"].endswith("operator-workloads") for b in bindings)
    cluster_bound = {b["roleRef"]["name"] for b in of_kind(objs, "ClusterRoleBinding")}
    assert not any(n.endswith("operator-workloads") for n in cluster_bound)
    pod = by_name(objs, "Deployment", "operator")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--namespace=inference" in args and "--namespace=batch" in args


def _check_restricted(pod: Obj, where: str) -> None:
    """The `restricted` Pod Security Standard, field by field, plus our own rules."""
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key), (where, key)
    assert psc.get("runAsNonRoot") is True, where
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, (where, volume)
    for container in (pod.get("initContainers") or []) + pod["containers"]:
        sc = container.get("securityContext") or {}
        name = f"{where}/{container['name']}"
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert sc.get("privileged") is not True, name
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, name
        assert sc.get("runAsUser", psc.get("runAsUser")) not in (None, 0), name
        assert sc.get("readOnlyRootFilesystem") is True, name
        caps = sc.get("capabilities") or {}
        assert caps.get("drop") == ["ALL"], name
        assert set(caps.get("add") or []) <= {"NET_BIND_SERVICE"}, name
        assert sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") in (
            "RuntimeDefault",
            "Localhost",
        ), name
        assert not any(p.get("hostPort") for p in container.get("ports") or []), name
        resources = container.get("resources") or {}
        assert {"cpu", "memory"} <= set(resources.get("requests") or {}), name
        assert {"cpu", "memory"} <= set(resources.get("limits") or {}), name


def test_every_pod_passes_restricted_pod_security() -> None:
    objs = helm_template(*MONITORING_API)
    deployments = of_kind(objs, "Deployment")
    assert len(deployments) == 2
    for deployment in deployments:
        _check_restricted(deployment["spec"]["template"]["spec"], deployment["metadata"]["name"])
    (test_pod,) = of_kind(objs, "Pod")
    _check_restricted(test_pod["spec"], "helm test")
    assert not {"DaemonSet", "StatefulSet", "Job", "CronJob"} & {o["kind"] for o in objs}


def test_operator_runs_alone() -> None:
    operator = by_name(helm_template(), "Deployment", "operator")["spec"]
    assert operator["replicas"] == 1
    assert operator["strategy"] == {"type": "Recreate"}  # kopf standalone: never two at once


def test_network_policies() -> None:
    objs = helm_template()
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(objs, "NetworkPolicy")}
    deny = policies["fleet-inference-factory-default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny
    router = policies["fleet-inference-factory-router"]
    ports = {p["port"] for rule in router["egress"] for p in rule.get("ports", [])}
    assert {53, 443, 6443, 9090, 8000, 8080} <= ports
    engines = next(
        r
        for r in router["egress"]
        if r["to"][0].get("podSelector", {}).get("matchLabels")
        == {"app.kubernetes.io/managed-by": "inference-factory"}
    )
    assert {p["port"] for p in engines["ports"]} == {8000, 8080}
    # Prometheus reaches the router's admin port only; clients its API port only.
    assert [[p["port"] for p in rule["ports"]] for rule in router["ingress"]] == [[8080], [9091]]
    assert "from" not in router["ingress"][0] and router["ingress"][1]["from"][0]["podSelector"]
    operator = policies["fleet-inference-factory-operator"]
    assert {p["port"] for rule in operator["egress"] for p in rule["ports"]} == {53, 443, 6443}
    assert [p["port"] for p in operator["ingress"][0]["ports"]] == [9090]
    tight = helm_template(
        "--set",
        "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
        "--set",
        "networkPolicy.routerIngress.cidrs={10.20.0.0/16}",
    )
    specs = [p["spec"] for p in of_kind(tight, "NetworkPolicy")]
    assert "0.0.0.0/0" not in json.dumps(specs)
    assert not of_kind(helm_template("--set", "networkPolicy.enabled=false"), "NetworkPolicy")


def test_gitops_base_render_is_current() -> None:
    stale = sync_chart.stale(sync_chart.gitops_render(toolchain().helm))
    assert not stale, "run: python tools/sync_chart.py"


def test_router_admin_surface_is_apart_from_the_tenants_port() -> None:
    objs = helm_template(*MONITORING_API)
    router = by_name(objs, "Deployment", "router")["spec"]["template"]["spec"]["containers"][0]
    assert "--listen=0.0.0.0:8080" in router["args"]
    assert "--admin-listen=0.0.0.0:9091" in router["args"]
    assert {p["name"]: p["containerPort"] for p in router["ports"]} == {"http": 8080, "admin": 9091}
    probes = [router[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")]
    assert [(p["path"], p["port"]) for p in probes] == [
        ("/healthz", "http"), ("/healthz", "http"), ("/readyz", "http")
    ]  # fmt: skip
    api = by_name(objs, "Service", "router")["spec"]
    admin = by_name(objs, "Service", "router-admin")["spec"]
    assert [p["targetPort"] for p in api["ports"]] == ["http"]  # never the admin port
    assert admin["type"] == "ClusterIP" and [p["name"] for p in admin["ports"]] == ["admin"]
    monitor = by_name(objs, "ServiceMonitor", "router")["spec"]
    assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [("admin", "/metrics")]


def test_service_monitors_set_the_jobs_the_alerts_select() -> None:
    """up{job="factory-operator"} / up{job="factory-router"} whatever the release's name."""
    objs = helm_template(*MONITORING_API, release="anything")
    for component in ("operator", "router"):
        (endpoint,) = by_name(objs, "ServiceMonitor", component)["spec"]["endpoints"]
        assert {"targetLabel": "job", "replacement": f"factory-{component}"} in endpoint[
            "relabelings"
        ]
