"""Shared fixtures: the session's `cluster`, a namespace per test, and `wait_until`."""

from __future__ import annotations

import shutil
import signal
import uuid
from collections.abc import Iterator

import pytest

from tests.support.cluster import (
    KubectlCluster,
    LocalCluster,
    existing_cluster,
    kind_cluster,
    session_home,
)
from tests.support.waiting import wait_until


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM (CI's timeout, `kill`) becomes an interrupt, so session fixtures still tear
    # down: no control plane is left running behind a stopped test run.
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster-backend",
        choices=("local", "kind", "existing"),
        default="local",
        help="local: the project's own control plane (default); kind: pytest-kind (Docker); "
        "existing: the cluster $KUBECONFIG points at",
    )


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest,
) -> Iterator[KubectlCluster]:
    """One cluster for the whole session."""
    backend = request.config.getoption("--cluster-backend")
    made: KubectlCluster
    if backend == "local":
        made = LocalCluster(session_home("cluster"))
    elif backend == "kind":
        made = kind_cluster(request)
    else:
        made = existing_cluster()
    try:
        yield made
    finally:
        made.stop()
        if isinstance(made, LocalCluster):
            shutil.rmtree(made.home, ignore_errors=True)


@pytest.fixture
def namespace(cluster: KubectlCluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


__all__ = ["cluster", "namespace", "wait_until"]
