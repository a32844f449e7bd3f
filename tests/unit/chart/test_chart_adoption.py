"""What platform teams expect of a chart they adopt as is, from `helm template` (no cluster):
Artifact Hub metadata that matches the chart, the values of a parent chart (`global`), security
contexts as values that also fit OpenShift's restricted-v2, extra env/volumes/objects, an
Ingress, an HTTPRoute and an HPA for the router, distinct probes, ephemeral-storage requests,
PDBs that never block a drain on an unhealthy pod, NetworkPolicies without any-address egress,
and the `helm test` hook's check run for real against stub endpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import yaml

from factory_operator.api import FleetRegion, InferenceFactory
from tests.unit.chart.chart_tools import (
    API_SERVER_CIDRS,
    CHART,
    ROOT,
    Obj,
    by_name,
    helm_template,
    helm_template_error,
    of_kind,
)

CHART_YAML = yaml.safe_load((CHART / "Chart.yaml").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
OPENSHIFT_API = ("--api-versions", "security.openshift.io/v1")
FIXED_IDS = ("runAsUser", "runAsGroup", "fsGroup")


def _pods(objs: list[Obj]) -> dict[str, Obj]:
    """Pod specs by owner name: the Deployments' templates and the test hook Pod."""
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in of_kind(objs, "Deployment")
    }
    pods.update({p["metadata"]["name"]: p["spec"] for p in of_kind(objs, "Pod")})
    return pods


def _annotation_list(key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = yaml.safe_load(CHART_YAML["annotations"][key])
    return found


# --- Artifact Hub --------------------------------------------------------------------------


def test_artifacthub_crds_are_the_charts_crds() -> None:
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    listed = {(c["kind"], c["version"], c["name"]) for c in _annotation_list("artifacthub.io/crds")}
    assert listed == {
        (c["spec"]["names"]["kind"], v["name"], c["metadata"]["name"])
        for c in crds
        for v in c["spec"]["versions"]
    }


def test_artifacthub_crd_examples_are_valid_objects() -> None:
    models = {"FleetRegion": FleetRegion, "InferenceFactory": InferenceFactory}
    examples = _annotation_list("artifacthub.io/crdsExamples")
    assert {e["kind"] for e in examples} == set(models)
    for example in examples:
        models[example["kind"]].model_validate(example)


def test_artifacthub_images_are_the_default_images() -> None:
    images = {i["name"]: i["image"] for i in _annotation_list("artifacthub.io/images")}
    objs = helm_template()
    rendered = {c["image"] for pod in _pods(objs).values() for c in pod["containers"]}
    assert set(images.values()) == rendered
    for component in ("operator", "router"):
        repo = VALUES[component]["image"]["repository"]
        assert images[f"factory-{component}"] == f"{repo}:{CHART_YAML['appVersion']}"


def test_artifacthub_license_links_icon_and_sources() -> None:
    notes = CHART_YAML["annotations"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'license = "{notes["artifacthub.io/license"]}"' in pyproject
    links = {link["name"]: link["url"] for link in _annotation_list("artifacthub.io/links")}
    assert {"Documentation", "Runbooks", "Issues"} <= set(links)
    assert all(url.startswith(CHART_YAML["home"]) for url in links.values())
    assert CHART_YAML["icon"].endswith("charts/inference-factory/icon.svg")
    assert (CHART / "icon.svg").is_file()
    assert CHART_YAML["sources"] and all(
        s.startswith(CHART_YAML["home"]) for s in CHART_YAML["sources"]
    )


# --- A parent chart's global values ---------------------------------------------------------


def test_global_image_registry_and_pull_secrets() -> None:
    objs = helm_template(
        "--set",
        "global.imageRegistry=mirror.example.com:5000/ghcr",
        "--set",
        "global.imagePullSecrets[0]=mirror",
        "--set",
        "imagePullSecrets[0].name=registry",
        "--set",
        "global.unknownToThisChart=kept",  # other sub-charts' globals are allowed
    )
    for name, pod in _pods(objs).items():
        for container in pod["containers"]:
            assert container["image"].startswith(
                "mirror.example.com:5000/ghcr/inference-factory/"
            ), name
        assert pod["imagePullSecrets"] == [{"name": "registry"}, {"name": "mirror"}], name


# --- Security contexts ----------------------------------------------------------------------


def test_security_contexts_are_values_with_restricted_defaults() -> None:
    pods = _pods(helm_template())
    assert len(pods) == 3
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsUser"] == 65532, name
        for container in pod["containers"]:
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, name
    custom = _pods(
        helm_template(
            "--set",
            "router.securityContext.readOnlyRootFilesystem=false",
            "--set",
            "operator.podSecurityContext.fsGroupChangePolicy=OnRootMismatch",
        )
    )
    router = custom["fleet-inference-factory-router"]["containers"][0]["securityContext"]
    assert router["readOnlyRootFilesystem"] is False
    operator = custom["fleet-inference-factory-operator"]["securityContext"]
    assert operator["fsGroupChangePolicy"] == "OnRootMismatch"


@pytest.mark.parametrize(
    ("args", "fixed"),
    [
        ((), True),
        (OPENSHIFT_API, False),
        (("--set", "openshift.adaptSecurityContext=force"), False),
        ((*OPENSHIFT_API, "--set", "openshift.adaptSecurityContext=disabled"), True),
    ],
    ids=["kubernetes", "openshift-auto", "force", "openshift-disabled"],
)
def test_openshift_restricted_v2_gets_no_fixed_ids(args: tuple[str, ...], fixed: bool) -> None:
    """restricted-v2 assigns uid, gid and fsGroup from the namespace's range and refuses
    others: adapted pods carry none, but keep everything else `restricted` asks for."""
    for name, pod in _pods(helm_template(*args)).items():
        contexts = [pod["securityContext"]] + [c["securityContext"] for c in pod["containers"]]
        for context in contexts:
            assert bool(set(FIXED_IDS) & set(context)) is fixed, (name, context)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


# --- Extras ---------------------------------------------------------------------------------


def test_extra_env_volumes_and_mounts(tmp_path: Any) -> None:
    extras: dict[str, list[dict[str, Any]]] = {
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": True}],
    }
    values = tmp_path / "extras.yaml"
    values.write_text(yaml.safe_dump({"operator": extras, "router": extras}))
    for name, pod in _pods(helm_template("-f", str(values))).items():
        if name.endswith("-test"):
            continue
        container = pod["containers"][0]
        assert extras["extraEnv"][0] in container["env"], name
        assert extras["extraVolumes"][0] in pod["volumes"], name
        assert extras["extraVolumeMounts"][0] in container["volumeMounts"], name
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], name


def test_extra_objects_object_and_templated_string(tmp_path: Any) -> None:
    values = tmp_path / "objects.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "extraObjects": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "plain"},
                        "data": {"a": "b"},
                    },
                    "apiVersion: v1\nkind: ConfigMap\n"
                    "metadata:\n  name: '{{ .Release.Name }}-templated'\n",
                ]
            }
        )
    )
    names = {c["metadata"]["name"] for c in of_kind(helm_template("-f", str(values)), "ConfigMap")}
    assert {"plain", "fleet-templated"} <= names


# --- Router exposure and scaling ------------------------------------------------------------


def test_router_ingress(tmp_path: Any) -> None:
    values = tmp_path / "ingress.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "router": {
                    "ingress": {
                        "enabled": True,
                        "className": "nginx",
                        "hosts": ["llm.example.com"],
                        "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
                        "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "600"},
                    }
                }
            }
        )
    )
    ingress = of_kind(helm_template("-f", str(values)), "Ingress")[0]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert rule["host"] == "llm.example.com"
    assert backend == {"name": "fleet-inference-factory-router", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "llm-tls"
    assert "hosts" in helm_template_error(
        *API_SERVER_CIDRS, "--set", "router.region=x", "--set", "router.ingress.enabled=true"
    )
    assert not of_kind(helm_template(), "Ingress")


def test_router_httproute() -> None:
    objs = helm_template(
        "--set",
        "router.httpRoute.enabled=true",
        "--set",
        "router.httpRoute.parentRefs[0].name=public",
        "--set",
        "router.httpRoute.parentRefs[0].namespace=gateways",
        "--set",
        "router.httpRoute.hostnames={llm.example.com}",
    )
    route = of_kind(objs, "HTTPRoute")[0]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["llm.example.com"]
    service = by_name(objs, "Service", "router")
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    assert backend == {
        "name": service["metadata"]["name"],
        "port": service["spec"]["ports"][0]["port"],
    }
    assert "parentRefs" in helm_template_error(
        *API_SERVER_CIDRS, "--set", "router.region=x", "--set", "router.httpRoute.enabled=true"
    )


def test_router_hpa_owns_the_replica_count() -> None:
    objs = helm_template(
        "--set",
        "router.autoscaling.enabled=true",
        "--set",
        "router.autoscaling.minReplicas=3",
        "--set",
        "router.autoscaling.maxReplicas=9",
    )
    hpa = of_kind(objs, "HorizontalPodAutoscaler")[0]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "fleet-inference-factory-router",
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 9)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert "replicas" not in by_name(objs, "Deployment", "router")["spec"]
    assert "replicas" in by_name(helm_template(), "Deployment", "router")["spec"]
    err = helm_template_error(
        *API_SERVER_CIDRS,
        "--set",
        "router.region=x",
        "--set",
        "router.autoscaling.enabled=true",
        "--set",
        "router.autoscaling.minReplicas=2",
        "--set",
        "router.pdb.minAvailable=2",
    )
    assert "router.autoscaling.minReplicas (2)" in err


# --- Probes, storage, disruption ------------------------------------------------------------


def test_liveness_and_readiness_differ_and_storage_is_requested() -> None:
    for name, pod in _pods(helm_template()).items():
        for container in pod["containers"]:
            requests = container["resources"]["requests"]
            assert "ephemeral-storage" in requests, name
            if name.endswith("-test"):
                continue
            live, ready = container["livenessProbe"], container["readinessProbe"]
            assert live["httpGet"] != ready["httpGet"], name


def test_pdbs_let_unhealthy_pods_be_evicted() -> None:
    pdbs = of_kind(helm_template(), "PodDisruptionBudget")
    assert len(pdbs) == 2
    assert all(p["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow" for p in pdbs)


# --- NetworkPolicies ------------------------------------------------------------------------


def _egress(objs: list[Obj], component: str) -> list[Obj]:
    rules: list[Obj] = by_name(objs, "NetworkPolicy", component)["spec"]["egress"]
    return rules


def test_no_egress_to_any_address_by_default() -> None:
    objs = helm_template()
    for policy in of_kind(objs, "NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            assert rule.get("to"), (policy["metadata"]["name"], rule)  # never "anywhere"
            for peer in rule["to"]:
                assert peer.get("ipBlock", {}).get("cidr") not in ("0.0.0.0/0", "::/0")
    # The only ipBlock is the API server's, on its ports only.
    blocks = [
        (rule["to"], rule["ports"])
        for rule in _egress(objs, "router")
        if any("ipBlock" in p for p in rule["to"])
    ]
    assert blocks == [
        (
            [{"ipBlock": {"cidr": "10.96.0.1/32"}}],
            [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
        )
    ]


def test_helm_template_needs_the_api_server_address() -> None:
    err = helm_template_error("--set", "router.region=eu-west-1")
    assert "networkPolicy.apiServer.cidrs is required" in err
    objs = helm_template("--set", "networkPolicy.enabled=false", base=("--set", "router.region=x"))
    assert not of_kind(objs, "NetworkPolicy")


def test_router_peers_are_explicit(tmp_path: Any) -> None:
    values = tmp_path / "peers.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "networkPolicy": {
                    "routerPeers": [
                        {"name": "us-east-1", "cidrs": ["198.51.100.10/32"], "ports": [443]},
                        {
                            "name": "eu-central-1",
                            "namespaceLabels": {"kubernetes.io/metadata.name": "fleet-eu"},
                            "podLabels": {"app.kubernetes.io/component": "router"},
                            "ports": [8080],
                        },
                    ]
                }
            }
        )
    )
    rules = _egress(helm_template("-f", str(values)), "router")
    assert {
        "to": [{"ipBlock": {"cidr": "198.51.100.10/32"}}],
        "ports": [{"port": 443, "protocol": "TCP"}],
    } in rules
    assert {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "fleet-eu"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "router"}},
            }
        ],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    } in rules
    # The operator never talks to peers.
    operator = _egress(helm_template("-f", str(values)), "operator")
    assert "198.51.100.10/32" not in json.dumps(operator)


def test_schema_refuses_a_peer_without_ports() -> None:
    err = helm_template_error(
        *API_SERVER_CIDRS,
        "--set",
        "router.region=x",
        "--set",
        "networkPolicy.routerPeers[0].name=us",
        "--set",
        "networkPolicy.routerPeers[0].cidrs={10.0.0.0/8}",
    )
    assert "ports" in err


# --- helm test ------------------------------------------------------------------------------


class _Stub(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, b""))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        return


@contextmanager
def _stub(routes: dict[str, tuple[int, bytes]]) -> Iterator[str]:
    handler = type("Handler", (_Stub,), {"routes": routes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run_hook(router: str, operator: str) -> subprocess.CompletedProcess[str]:
    """The hook Pod's container command, run here with its URLs pointed at the stubs."""
    pod = of_kind(helm_template(), "Pod")[0]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ROUTER_READYZ_URL"] == "http://fleet-inference-factory-router:80/readyz"
    assert env["OPERATOR_METRICS_URL"] == "http://fleet-inference-factory-operator:9090/metrics"
    env = {
        **os.environ,
        "ROUTER_READYZ_URL": f"{router}/readyz",
        "OPERATOR_METRICS_URL": f"{operator}/metrics",
        "CHECK_DEADLINE_SECONDS": "3",
    }
    return subprocess.run(
        [sys.executable, "-c", container["args"][0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_helm_test_hook_passes_on_a_ready_router_and_operator_metrics() -> None:
    metrics = (
        b"# TYPE factory_operator_reconciles_total counter\nfactory_operator_reconciles_total 3\n"
    )
    with _stub({"/readyz": (200, b"ok")}) as router, _stub({"/metrics": (200, metrics)}) as op:
        done = _run_hook(router, op)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("router_status", "metrics", "expected"),
    [
        (503, b"factory_operator_reconciles_total 1\n", "/readyz: HTTP Error 503"),
        (200, b"python_info 1\n", "answered without 'factory_operator_' series"),
    ],
    ids=["router-not-ready", "not-the-operators-metrics"],
)
def test_helm_test_hook_fails_with_what_is_wrong(
    router_status: int, metrics: bytes, expected: str
) -> None:
    with (
        _stub({"/readyz": (router_status, b"")}) as router,
        _stub({"/metrics": (200, metrics)}) as op,
    ):
        done = _run_hook(router, op)
    assert done.returncode == 1
    assert expected in done.stderr
