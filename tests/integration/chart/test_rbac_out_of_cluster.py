"""The operator and the router, run out of cluster with nothing but the credentials of the
chart's ServiceAccounts (token requests), through their real flows: the RBAC the chart grants
is enough. (That it is no more than needed is what the golden files of test_rbac_golden.py
and its `cannot` checks keep.)

- the operator (`factory-operator`) reconciles an InferenceFactory to Ready=True (reads
  FleetRegions, Nodes, Pods, ReplicaSets; applies Deployments, Services and
  PodDisruptionBudgets; patches status), deletes the children of a removed pool, and
  finalizes the factory on deletion;
- the router (`factory-router --kubeconfig`) lists and watches FleetRegions,
  InferenceFactories, EndpointSlices and Pods, and routes the factory's model to its pool.

Neither log may mention a Forbidden answer of the API server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.chart.conftest import Release
from tests.integration.chart.helm import (
    ADMIN_KEY,
    REGION,
    TENANT,
    TENANT_KEY,
    service_account_kubeconfig,
    tenants_yaml,
)
from tests.support.cluster import KubectlCluster
from tests.support.waiting import wait_until

BIN = Path(sys.executable).parent
MODEL = "llama-3.1-8b-instruct"
FACTORY = {
    "apiVersion": "inference.factory.dev/v1alpha1", "kind": "InferenceFactory",
    "metadata": {"name": "rbac"},
    "spec": {
        "model": {"name": MODEL, "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "residency": {"jurisdictions": ["EU"]},
        "pools": [{"name": "h100-dub", "region": REGION,
                   "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
                   "replicas": {"min": 1, "max": 2}},
                  {"name": "inf2-fra", "region": "eu-central-1",
                   "accelerator": {"kind": "neuron", "type": "inf2", "count": 1},
                   "replicas": {"min": 1, "max": 1}}],
    },
}  # fmt: skip
HTTP_TIMEOUT = 5.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(cmd: list[str], kubeconfig: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _rbac_denials(log: Path) -> list[str]:
    """Lines reporting an RBAC denial (`... is forbidden: User "system:serviceaccount:..."
    cannot ...`); other 403s, such as writes into a namespace being deleted, are not RBAC."""
    return [line for line in log.read_text(errors="replace").splitlines()
            if "is forbidden: User" in line]  # fmt: skip


def _get(url: str, key: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except (urllib.error.URLError, ConnectionError):
        return 0, None


def _ready_condition(cluster: KubectlCluster, namespace: str) -> dict[str, Any] | None:
    done = cluster.run("get", "inferencefactory", "rbac", "-n", namespace, "-o", "json")
    if done.returncode != 0:
        return None
    conditions = (json.loads(done.stdout).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready" and c["status"] == "True"), None)


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_operator_and_router_work_with_their_service_accounts(
    request: pytest.FixtureRequest, fleet_api: KubectlCluster, tmp_path: Path, mode: str
) -> None:
    """cluster-wide: the default install, the operator watching every namespace;
    namespaced: operator.watchNamespaces, the operator run with --namespace as the chart runs
    it (kopf then also lists and watches Namespaces)."""
    cluster = fleet_api
    if mode == "namespaced":
        release: Release = request.getfixturevalue("installed_namespaced")
        namespace: str = request.getfixturevalue("watched_namespace")
        scope = ["--namespace", namespace]
    else:
        release = request.getfixturevalue("installed")
        namespace = request.getfixturevalue("namespace")
        scope = []
    operator_log = tmp_path / "operator.log"
    operator_kubeconfig = service_account_kubeconfig(
        cluster, release.namespace, release.service_account("operator"),
        tmp_path / "operator.kubeconfig")  # fmt: skip
    operator = _start([str(BIN / "factory-operator"), *scope, "--liveness", "",
                       "--metrics-port", "0", "--resync", "2", "--log-format", "json"],
                      operator_kubeconfig, operator_log)  # fmt: skip
    try:
        _operator_flow(cluster, namespace, operator_log)
        _router_flow(cluster, release, tmp_path)
        _delete_flow(cluster, namespace, operator_log)
    finally:
        _stop(operator)
    assert not _rbac_denials(operator_log), _rbac_denials(operator_log)


def _operator_flow(cluster: KubectlCluster, namespace: str, log: Path) -> None:
    """Create: children applied, status patched to Ready=True; then a pool removed: its
    children deleted."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(FACTORY))
    wait_until(
        lambda: _ready_condition(cluster, namespace),
        120,
        interval=0.5,
        what=f"InferenceFactory rbac Ready=True (operator log: {log})",
    )
    children = set(cluster.kubectl("get", "deployments,services,poddisruptionbudgets", "-n",
                                   namespace, "-o", "name").split())  # fmt: skip
    assert {"deployment.apps/rbac-h100-dub", "deployment.apps/rbac-inf2-fra"} <= children
    one_pool = json.loads(json.dumps(FACTORY))
    one_pool["spec"]["pools"] = one_pool["spec"]["pools"][:1]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(one_pool))

    def inf2_gone() -> bool:
        names = cluster.kubectl("get", "deployments", "-n", namespace, "-o", "name").split()
        return "deployment.apps/rbac-inf2-fra" not in names

    wait_until(inf2_gone, 60, interval=0.5, what=f"pool inf2-fra's Deployment deleted ({log})")
    wait_until(
        lambda: _ready_condition(cluster, namespace),
        60,
        interval=0.5,
        what=f"InferenceFactory rbac Ready=True with one pool ({log})",
    )


def _router_flow(cluster: KubectlCluster, release: Release, tmp_path: Path) -> None:
    """The router discovers the factory's pool and routes its model there."""
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(tenants_yaml())
    kubeconfig = service_account_kubeconfig(
        cluster, release.namespace, release.service_account("router"),
        tmp_path / "router.kubeconfig")  # fmt: skip
    log = tmp_path / "router.log"
    base = f"http://127.0.0.1:{_free_port()}"
    admin = f"http://127.0.0.1:{_free_port()}"  # /admin/explain and /readyz details
    router = _start([str(BIN / "factory-router"), "--kubeconfig", str(kubeconfig),
                     "--region", REGION, "--tenants", str(tenants),
                     "--listen", base.removeprefix("http://"),
                     "--admin-listen", admin.removeprefix("http://")], kubeconfig, log)  # fmt: skip
    try:
        explain_url = f"{admin}/admin/explain?tenant={TENANT}&model={MODEL}"

        def routed() -> dict[str, Any]:
            status, doc = _get(explain_url, ADMIN_KEY)
            return doc if status == 200 and doc.get("chosen") else {}

        explained = wait_until(
            routed, 60, interval=0.5, what=f"the router routing {MODEL} (log: {log})"
        )
        assert "h100-dub" in json.dumps(explained["candidates"]), explained
        status, models = _get(f"{base}/v1/models", TENANT_KEY)
        assert status == 200 and [m["id"] for m in models["data"]] == [MODEL], models
        status, ready = _get(f"{admin}/readyz", TENANT_KEY)
        assert status == 200, ready
        assert not [p for p in ready["problems"] if p.startswith("discovery")], ready
    finally:
        _stop(router)
    assert not _rbac_denials(log), _rbac_denials(log)


def _delete_flow(cluster: KubectlCluster, namespace: str, log: Path) -> None:
    """Delete: the operator's finalizer runs and is removed (the factory disappears)."""
    cluster.kubectl("delete", "inferencefactory", "rbac", "-n", namespace, "--wait=false")
    wait_until(lambda: cluster.run("get", "inferencefactory", "rbac", "-n", namespace)
               .returncode != 0, 60, interval=0.5,
               what=f"InferenceFactory rbac deleted (operator log: {log})")  # fmt: skip
