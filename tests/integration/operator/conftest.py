"""Fixtures for operator tests: CRDs and FleetRegions installed, the operator in-process.

The operator runs under `kopf.testing.KopfRunner`, watching only the test's namespace;
tests that kill it run `factory-operator` as a subprocess instead (see `operator_process`).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner

from factory_operator.handlers import build_registry
from factory_operator.k8s import Kube, OperatorMetrics, load_api_client
from factory_operator.plan import OperatorSettings
from tests.integration.operator.prometheus_kit import LoadSource, prometheus_scraping_a_load_page
from tests.support.cluster import KubectlCluster, install_fleet_api
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def operator_cluster(cluster: KubectlCluster) -> KubectlCluster:
    """The cluster with the CRDs and the local topology's FleetRegions installed."""
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig_path)
    install_fleet_api(cluster)
    return cluster


class RunningOperator:
    """The in-process operator and its request metrics."""

    def __init__(self, runner: KopfRunner, metrics: OperatorMetrics) -> None:
        self.runner = runner
        self.metrics = metrics


def operator_settings(namespace: str, **overrides: Any) -> OperatorSettings:
    values: dict[str, Any] = {
        "namespaces": [namespace], "resync_seconds": 2.0, "liveness_endpoint": None,
        "metrics_port": 0, "log_format": "plain", **overrides,
    }  # fmt: skip
    return OperatorSettings(**values)


@contextmanager
def running_operator(namespace: str, **overrides: Any) -> Iterator[RunningOperator]:
    """The operator in-process with these settings, watching only ``namespace``."""
    settings = operator_settings(namespace, **overrides)
    metrics = OperatorMetrics()
    registry = build_registry(settings, lambda: Kube(load_api_client(), settings, metrics), metrics)
    with KopfRunner(["run", "--standalone", "--namespace", namespace],
                    registry=registry, timeout=60) as runner:  # fmt: skip
        yield RunningOperator(runner, metrics)
    collect_runner_garbage()
    assert runner.exception is None, runner.exception


@pytest.fixture
def operator(operator_cluster: KubectlCluster, namespace: str) -> Iterator[RunningOperator]:
    """The operator in-process, watching only this test's namespace."""
    with running_operator(namespace) as running:
        yield running


@pytest.fixture(scope="session")
def load_source() -> Iterator[LoadSource]:
    """A real Prometheus scraping a load page the autoscaler tests set (one per session)."""
    with prometheus_scraping_a_load_page() as source:
        yield source


def collect_runner_garbage() -> None:
    """Collect what a stopped KopfRunner leaves for the garbage collector.

    kopf cancels its watch streams on shutdown and leaves their aiohttp transports to be
    collected; with warnings as errors, their ResourceWarning would surface in whichever later
    test happens to trigger the collection. Collect them here, where they belong.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def get(cluster: KubectlCluster, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    done = cluster.run("get", kind, name, "-n", namespace, "-o", "json")
    if done.returncode != 0:
        return None
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def condition(factory: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for cond in ((factory or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            found: dict[str, Any] = cond
            return found
    return None


def wait_condition(cluster: KubectlCluster, namespace: str, name: str, kind: str,
                   status: str, reason: str | None = None,
                   timeout: float = 60) -> dict[str, Any]:  # fmt: skip
    def check() -> dict[str, Any] | None:
        cond = condition(get(cluster, "inferencefactory", name, namespace), kind)
        if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
            return cond
        return None

    return wait_until(check, timeout, what=f"{name}: {kind}={status} {reason or ''}")


def operator_process(cluster: KubectlCluster, namespace: str,
                     log: Path) -> subprocess.Popen[bytes]:  # fmt: skip
    """`factory-operator` as a subprocess (for tests that kill it)."""
    binary = Path(sys.executable).parent / "factory-operator"
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(binary), "--namespace", namespace, "--metrics-port", "0", "--liveness", "",
             "--resync", "2", "--log-format", "plain"],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig_path)},
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
