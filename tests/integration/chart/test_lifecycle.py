"""`helm install`, `helm upgrade` (a changed value and a changed CRD) and `helm uninstall` of
the chart on the real API server, into a namespace enforcing Pod Security `restricted`.

The release installs the CRDs itself (adopting the ones the session applied), so that the
upgrade really changes them; the repository's CRDs are restored afterwards. Uninstalling must
leave the CRDs (helm.sh/resource-policy: keep), and with them the users' FleetRegions,
InferenceFactories and the Deployments the operator made for them.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import yaml

from tests.integration.chart.conftest import new_namespace
from tests.integration.chart.helm import (
    CHART,
    Helm,
    adopt_crds,
    create_tenants_secret,
    restore_crds,
    restrict,
    wait_ready,
)
from tests.support.cluster import KubectlCluster

FACTORIES_CRD = "inferencefactories.inference.factory.dev"
EXTRA_COLUMN = {"name": "Upgraded", "type": "string", "jsonPath": ".metadata.uid",
                "priority": 1, "description": "Added by the chart upgrade test."}  # fmt: skip
REGION_NAME = f"chart-test-{uuid.uuid4().hex[:6]}"
REGION = {"apiVersion": "inference.factory.dev/v1alpha1", "kind": "FleetRegion",
          "metadata": {"name": REGION_NAME}, "spec": {"jurisdiction": "EU"}}  # fmt: skip
FACTORY = {
    "apiVersion": "inference.factory.dev/v1alpha1", "kind": "InferenceFactory",
    "metadata": {"name": "kept"},
    "spec": {
        "model": {"name": "llama-3.1-8b-instruct", "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
        "residency": {"jurisdictions": ["EU"]},
        "pools": [{"name": "h100-dub", "region": "eu-west-1",
                   "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
                   "replicas": {"min": 1, "max": 1}}],
    },
}  # fmt: skip
# What the operator would have made for FACTORY (the chart's operator does not run here:
# kwok pods have no containers), owned by the factory as the operator's children are.
CHILD = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "kept-h100-dub",
                 "labels": {"app.kubernetes.io/managed-by": "inference-factory"}},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "kept-h100-dub"}},
             "template": {"metadata": {"labels": {"app": "kept-h100-dub"}},
                          "spec": {"containers": [{"name": "engine",
                                                   "image": "vllm/vllm-openai"}]}}},
}  # fmt: skip


def _chart_with_changed_crd(tmp: Path) -> Path:
    """A copy of the chart whose InferenceFactory CRD has one more printer column."""
    chart = tmp / "inference-factory"
    shutil.copytree(CHART, chart)
    path = chart / "files" / "crds" / f"{FACTORIES_CRD}.yaml"
    crd = yaml.safe_load(path.read_text())
    for version in crd["spec"]["versions"]:
        version["additionalPrinterColumns"].append(EXTRA_COLUMN)
    path.write_text(yaml.safe_dump(crd, sort_keys=False, width=100))
    return chart


def _columns(cluster: KubectlCluster) -> list[str]:
    crd = json.loads(cluster.kubectl("get", "crd", FACTORIES_CRD, "-o", "json"))
    return [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]


def _deployment(cluster: KubectlCluster, namespace: str, name: str) -> dict[str, object]:
    found: dict[str, object] = json.loads(
        cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json")
    )
    return found


def test_install_upgrade_uninstall_in_a_restricted_namespace(
    fleet_api: KubectlCluster, helm: Helm, namespace: str, tmp_path: Path
) -> None:
    cluster = fleet_api
    chart_ns = new_namespace(cluster, "chart")
    release = f"if-{uuid.uuid4().hex[:6]}"
    try:
        restrict(cluster, chart_ns)
        create_tenants_secret(cluster, release, chart_ns)
        adopt_crds(cluster, release, chart_ns)

        # install: every pod admitted under `restricted`, and Ready
        helm.install(release, chart_ns)
        wait_ready(cluster, chart_ns, "operator", 1)
        wait_ready(cluster, chart_ns, "router", 2)
        assert "Upgraded" not in _columns(cluster)

        # a user's FleetRegion and factory (with its child Deployment) in another namespace
        cluster.kubectl("apply", "-f", "-", input=json.dumps(REGION))
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(FACTORY))
        factory = json.loads(cluster.kubectl("get", "inferencefactory", "kept", "-n", namespace,
                                             "-o", "json"))  # fmt: skip
        child = json.loads(json.dumps(CHILD))
        child["metadata"]["ownerReferences"] = [{
            "apiVersion": FACTORY["apiVersion"], "kind": "InferenceFactory", "name": "kept",
            "uid": factory["metadata"]["uid"], "controller": True}]  # fmt: skip
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(child))

        # upgrade: a changed value (router replicas) and a changed CRD (a printer column)
        helm("upgrade", release, str(_chart_with_changed_crd(tmp_path)), "--namespace",
             chart_ns, "--reuse-values", "--set", "router.replicas=3", "--wait",
             "--timeout", "180s")  # fmt: skip
        wait_ready(cluster, chart_ns, "router", 3)
        wait_ready(cluster, chart_ns, "operator", 1)
        assert "Upgraded" in _columns(cluster)
        history = json.loads(helm("history", release, "-n", chart_ns, "-o", "json"))
        assert [h["status"] for h in history] == ["superseded", "deployed"]

        # uninstall: the chart's objects go, the CRDs and the users' objects stay
        helm("uninstall", release, "--namespace", chart_ns, "--wait", "--timeout", "120s")
        assert not cluster.kubectl("get", "deployments", "-n", chart_ns, "-o", "name")
        for crd in ("fleetregions.inference.factory.dev", FACTORIES_CRD):
            cluster.kubectl("get", "crd", crd)
        assert "Upgraded" in _columns(cluster)
        kept = json.loads(cluster.kubectl("get", "inferencefactory", "kept", "-n", namespace,
                                          "-o", "json"))  # fmt: skip
        assert kept["metadata"]["uid"] == factory["metadata"]["uid"]
        assert not kept["metadata"].get("deletionTimestamp")
        assert _deployment(cluster, namespace, "kept-h100-dub")["metadata"]  # still there
        assert cluster.kubectl("get", "fleetregion", REGION_NAME, "-o", "name")
        restore_crds(cluster)  # the session's other tests get the repository's CRDs back
        assert "Upgraded" not in _columns(cluster)
    finally:
        helm.run("uninstall", release, "--namespace", chart_ns)
        restore_crds(cluster)
        cluster.kubectl("delete", "fleetregion", REGION_NAME, "--ignore-not-found")
        cluster.kubectl("delete", "namespace", chart_ns, "--wait=false", check=False)
