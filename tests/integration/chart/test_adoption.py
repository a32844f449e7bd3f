"""The chart as platform teams adopt it, on the real API server: a dependency of an umbrella
chart that sets `global` values (helm dependency build + helm install --wait into a
`restricted` namespace), and `kubectl apply -f deploy/examples/` as the READMEs say."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.chart.conftest import new_namespace
from tests.integration.chart.helm import (
    CHART,
    REGION,
    ROOT,
    WAIT,
    Helm,
    create_tenants_secret,
    restrict,
    wait_ready,
)
from tests.support.cluster import KubectlCluster

MIRROR = "mirror.example.com/ghcr"


def _umbrella(folder: Path, release: str) -> Path:
    """A platform team's umbrella chart: inference-factory as a dependency (from this
    repository, file://), its values under the dependency's name, and global values."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    folder.mkdir()
    (folder / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0", "type": "application",
        "dependencies": [{"name": "inference-factory", "version": chart["version"],
                          "repository": f"file://{CHART}"}],
    }))  # fmt: skip
    (folder / "values.yaml").write_text(yaml.safe_dump({
        "global": {"imageRegistry": MIRROR, "imagePullSecrets": ["mirror-pull"],
                   "storageClass": "gp3"},  # another sub-chart's global: must be accepted
        "inference-factory": {
            "crds": {"install": False},  # the session applied them with kubectl
            "router": {"region": REGION, "tenants": {"existingSecret": f"{release}-tenants"}},
        },
    }))  # fmt: skip
    return folder


@pytest.fixture
def umbrella_release(fleet_api: KubectlCluster, helm: Helm, tmp_path: Path) -> Iterator[
        tuple[str, str]]:  # fmt: skip
    namespace = new_namespace(fleet_api, "umbrella")
    release = f"platform-{uuid.uuid4().hex[:6]}"
    try:
        restrict(fleet_api, namespace)
        create_tenants_secret(fleet_api, release, namespace)
        folder = _umbrella(tmp_path / "platform", release)
        helm("dependency", "build", str(folder))
        helm("install", release, str(folder), "--namespace", namespace, *WAIT)
        yield release, namespace
    finally:
        helm.run("uninstall", release, "--namespace", namespace)
        fleet_api.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_installs_as_a_sub_chart_with_global_values(
    fleet_api: KubectlCluster, helm: Helm, umbrella_release: tuple[str, str]
) -> None:
    release, namespace = umbrella_release
    status = json.loads(helm("status", release, "--namespace", namespace, "-o", "json"))
    assert status["info"]["status"] == "deployed"
    for component, count in (("operator", 1), ("router", 2)):
        pods = wait_ready(fleet_api, namespace, component, count)
        for pod in pods:
            spec = pod["spec"]
            image = spec["containers"][0]["image"]
            assert image.startswith(f"{MIRROR}/inference-factory/factory-{component}:"), image
            assert {"name": "mirror-pull"} in spec["imagePullSecrets"]
    # The sub-chart's objects are named after the umbrella release.
    deployments = json.loads(fleet_api.kubectl("-n", namespace, "get", "deployments", "-o",
                                               "json"))["items"]  # fmt: skip
    assert sorted(d["metadata"]["name"] for d in deployments) == [
        f"{release}-inference-factory-operator",
        f"{release}-inference-factory-router",
    ]


@pytest.fixture
def examples_namespace(fleet_api: KubectlCluster) -> KubectlCluster:
    """The examples' namespace (`inference`), as deploy/gitops/base/namespaces.yaml makes it:
    a server dry run of an object needs its namespace to exist."""
    fleet_api.kubectl("apply", "-f", str(ROOT / "deploy" / "gitops" / "base" / "namespaces.yaml"))
    return fleet_api


def test_kubectl_apply_f_examples_works(examples_namespace: KubectlCluster) -> None:
    """`kubectl apply -f deploy/examples/` (a folder): every example is accepted and nothing
    else is read (the Kustomization file has no extension kubectl reads)."""
    examples = ROOT / "deploy" / "examples"
    expected = sum(
        1 for path in examples.glob("*.yaml") for doc in yaml.safe_load_all(path.read_text())
        if doc
    )  # fmt: skip
    done = examples_namespace.run("apply", "--dry-run=server", "-f", f"{examples}/", timeout=120)
    assert done.returncode == 0, done.stderr
    applied = done.stdout.splitlines()
    assert len(applied) == expected >= 7, applied
    assert all("(server dry run)" in line for line in applied)


def test_crds_applied_with_kubectl_need_crds_install_false(
    fleet_api: KubectlCluster, helm: Helm, namespace: str
) -> None:
    """What the README's CRDs section says: with the CRDs applied by kubectl (the session
    did), the chart's default refuses to take them over and installs nothing; the README's
    way, crds.install=false, installs (the `installed` fixture and the README test)."""
    release = f"crds-{uuid.uuid4().hex[:6]}"
    try:
        done = helm.run("install", release, str(CHART), "--namespace", namespace,
                        "--set", f"router.region={REGION}")  # fmt: skip
        assert done.returncode != 0
        said = "exists and cannot be imported into the current release"
        assert said in done.stderr, done.stderr
        assert said in (CHART / "README.md").read_text().replace("\n", " ")
        assert not fleet_api.kubectl("get", "deployments", "-n", namespace, "-o", "name")
    finally:
        helm.run("uninstall", release, "--namespace", namespace)
