"""What the chart and the GitOps overlays render is accepted by the real API server
(`kubectl apply --dry-run=server`: schema, admission and Pod Security, nothing persisted)."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.integration.chart.helm import CHART, REGION, ROOT, Helm, restrict
from tests.support.cluster import KubectlCluster

OVERLAYS = ROOT / "deploy" / "gitops" / "overlays"
REGIONS = sorted(p.name for p in OVERLAYS.iterdir())
POD_SECURITY_WARNING = "would violate PodSecurity"
MONITORING_GROUP = "monitoring.coreos.com/"


def _dry_run(cluster: KubectlCluster, manifests: str, *args: str) -> subprocess.CompletedProcess[
        str]:  # fmt: skip
    return cluster.run("apply", "--dry-run=server", *args, "-f", "-", input=manifests,
                       timeout=120)  # fmt: skip


@pytest.mark.parametrize("namespaced", [False, True], ids=["defaults", "namespaced-operator"])
def test_helm_template_is_accepted_by_the_server(
    fleet_api: KubectlCluster, helm: Helm, namespace: str, namespaced: bool
) -> None:
    restrict(fleet_api, namespace)
    # The namespaced operator gets RoleBindings in the namespaces it watches (here its own).
    values = ("--set", f"operator.watchNamespaces={{{namespace}}}") if namespaced else ()
    manifests = helm("template", "fleet", str(CHART), "--namespace", namespace,
                     "--set", f"router.region={REGION}",
                     "--set", "router.tenants.existingSecret=fleet-tenants",
                     # helm template cannot look the API server up (helm install does).
                     "--set", "networkPolicy.apiServer.cidrs={10.96.0.1/32}", *values)  # fmt: skip
    done = _dry_run(fleet_api, manifests, "--namespace", namespace)
    assert done.returncode == 0, done.stderr
    # Deployments are checked against the namespace's `warn` level: no pod would be refused.
    assert POD_SECURITY_WARNING not in done.stderr, done.stderr
    applied = done.stdout.splitlines()
    assert sum("(server dry run)" in line for line in applied) == len(applied) > 20


@pytest.fixture(scope="module")
def gitops_namespaces(fleet_api: KubectlCluster) -> KubectlCluster:
    """The overlays' namespaces, really created: a server dry run of a Namespace does not
    persist it, so the objects in it would be refused as NotFound."""
    fleet_api.kubectl("apply", "-f", str(ROOT / "deploy" / "gitops" / "base" / "namespaces.yaml"))
    return fleet_api


@pytest.mark.parametrize("region", REGIONS)
def test_gitops_overlay_is_accepted_by_the_server(
    gitops_namespaces: KubectlCluster, region: str
) -> None:
    cluster = gitops_namespaces
    rendered = cluster.run("kustomize", str(OVERLAYS / region))
    assert rendered.returncode == 0, rendered.stderr
    # The session's API server does not serve the Prometheus Operator's API (the project
    # vendors none of its CRDs, and a PodMonitor CRD would change what the operator does in
    # the other tests): those objects are left out here, and only those. Their content is
    # checked by tests/unit/chart (test_gitops) and promtool (tests/static).
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    served = [d for d in docs if not d["apiVersion"].startswith(MONITORING_GROUP)]
    assert sorted(d["kind"] for d in docs if d not in served) == [
        "PrometheusRule", "ServiceMonitor", "ServiceMonitor"]  # fmt: skip
    done = _dry_run(cluster, yaml.safe_dump_all(served))
    assert done.returncode == 0, done.stderr
    assert POD_SECURITY_WARNING not in done.stderr, done.stderr
    applied = done.stdout.splitlines()
    assert any(line.startswith("inferencefactory.") for line in applied), applied
    assert any(line.startswith("deployment.apps/inference-factory-router") for line in applied)
