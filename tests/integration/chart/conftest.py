"""Fixtures of the chart's integration tests: the pinned helm, the CRDs and FleetRegions,
and one release installed into a `restricted` namespace that several tests share.

The shared release is installed with `crds.install=false` (the session applies the CRDs):
CRDs are cluster-wide and only one release can own them; the lifecycle test installs them
through the chart itself (adopting them), see test_lifecycle.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from factoryctl.toolchain import find_tools
from tests.integration.chart.helm import (
    Helm,
    create_tenants_secret,
    restrict,
)
from tests.support.cluster import KubectlCluster, install_fleet_api


@pytest.fixture(scope="session")
def helm(cluster: KubectlCluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    tools = find_tools()
    if tools is None:
        pytest.fail("the pinned toolchain (helm) is not built: run `factoryctl dev tools`")
    return Helm(str(tools.helm), cluster, tmp_path_factory.mktemp("helm-state"))


@pytest.fixture(scope="session")
def fleet_api(cluster: KubectlCluster) -> KubectlCluster:
    """The cluster with the CRDs and the example FleetRegions (without their remote
    endpoints and Prometheus, which the local fleet does not have)."""
    install_fleet_api(cluster)
    return cluster


def new_namespace(cluster: KubectlCluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    return name


@dataclass(frozen=True)
class Release:
    """An installed release: its name, namespace, and the ServiceAccounts it made."""

    name: str
    namespace: str

    def service_account(self, component: str) -> str:
        return f"{self.name}-inference-factory-{component}"


def _install(cluster: KubectlCluster, helm: Helm, *values: str) -> Iterator[Release]:
    namespace = new_namespace(cluster, "chart")
    release = Release(f"if-{uuid.uuid4().hex[:6]}", namespace)
    try:
        restrict(cluster, namespace)
        create_tenants_secret(cluster, release.name, namespace)
        helm.install(release.name, namespace, "--set", "crds.install=false", *values)
        yield release
    finally:
        helm.run("uninstall", release.name, "--namespace", namespace)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def installed(fleet_api: KubectlCluster, helm: Helm) -> Iterator[Release]:
    """The chart with its default values (CRDs excluded) in a `restricted` namespace."""
    yield from _install(fleet_api, helm)


@pytest.fixture(scope="module")
def watched_namespace(fleet_api: KubectlCluster) -> Iterator[str]:
    """A workload namespace for an operator limited to it (operator.watchNamespaces)."""
    name = new_namespace(fleet_api, "work")
    yield name
    fleet_api.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def installed_namespaced(fleet_api: KubectlCluster, helm: Helm,
                         watched_namespace: str) -> Iterator[Release]:  # fmt: skip
    """The chart with the operator limited to `watched_namespace`."""
    yield from _install(fleet_api, helm, "--set",
                        f"operator.watchNamespaces={{{watched_namespace}}}")  # fmt: skip
