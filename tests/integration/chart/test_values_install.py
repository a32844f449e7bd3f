"""The values schema at `helm install` time, against the real cluster: a misspelled key and a
wrong type, a router peer without an address and an API server address that is no CIDR each
stop the install with a message naming the key, and nothing is installed.
(The same for `helm template` without a cluster: tests/unit/chart/test_chart.py.)"""

from __future__ import annotations

import json

import pytest

from tests.integration.chart.helm import CHART, Helm, release_values
from tests.support.cluster import KubectlCluster

SCHEMA_ERROR = "values don't meet the specifications of the schema(s)"


@pytest.mark.parametrize(("bad", "expected"), [
    (("--set", "router.replicaz=3"), "additional properties 'replicaz' not allowed"),
    (("--set", "operatr.enabled=false"), "additional properties 'operatr' not allowed"),
    (("--set", "router.replicas=two"), "/router/replicas': got string, want integer"),
    (("--set", "operator.resyncSeconds=true"), "/operator/resyncSeconds': got boolean"),
    # A peer without cidrs, namespaceLabels or podLabels: its egress would allow any address.
    (("--set", "networkPolicy.routerPeers[0].name=us",
      "--set", "networkPolicy.routerPeers[0].ports={443}"), "missing property 'cidrs'"),
    (("--set", "networkPolicy.apiServer.cidrs={10.96.0.1}"),
     "/networkPolicy/apiServer/cidrs/0': '10.96.0.1' does not match pattern"),
], ids=["misspelled-key", "misspelled-top-level-key", "string-for-integer",
        "boolean-for-integer", "router-peer-without-address", "api-server-not-a-cidr"])  # fmt: skip
def test_install_refuses_bad_values(
    cluster: KubectlCluster, helm: Helm, namespace: str, bad: tuple[str, ...], expected: str
) -> None:
    done = helm.run("install", "bad", str(CHART), "--namespace", namespace,
                    *release_values("bad"), *bad)  # fmt: skip
    assert done.returncode != 0
    assert SCHEMA_ERROR in done.stderr, done.stderr
    assert expected in done.stderr, done.stderr
    assert json.loads(helm("list", "--namespace", namespace, "--all", "-o", "json")) == []
    assert not cluster.kubectl("get", "all", "-n", namespace, "-o", "name")
