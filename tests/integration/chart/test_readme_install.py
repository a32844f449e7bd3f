"""The chart README's install, run as written against the real API server: its `tenants`
block becomes tenants.yaml, its `install` block runs with bash from a folder that looks like
a checkout (charts/, crds/, deploy/ of this repository) with the pinned helm and kubectl
first on PATH. The README cannot drift from what works: a missing required value, CRDs that
make `helm install` fail once applied with kubectl, a namespace the examples need.

Blocks are found by a marker comment on the line above their fence, as in the project's
README test (tests/e2e/test_readme.py): `<!-- readme-test: install -->`.

The README's names are fixed (namespace and release `inference-factory`, the example
FleetRegions and factory): the test removes what it made afterwards and restores the
session's FleetRegions (without remote endpoints, as the other chart tests expect them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from factoryctl.toolchain import find_tools
from tests.integration.chart.helm import CHART, CRDS, ROOT, Helm, wait_ready
from tests.support.cluster import KubectlCluster, install_fleet_api
from tests.support.waiting import wait_until

README = CHART / "README.md"
MARKED_BLOCK = re.compile(
    r"^<!-- readme-test: (?P<name>[\w-]+) -->\n```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
RELEASE = NAMESPACE = "inference-factory"
FACTORY = ("inference", "llama-8b")


def readme_blocks() -> dict[str, str]:
    blocks: dict[str, str] = {}
    for match in MARKED_BLOCK.finditer(README.read_text()):
        assert match["name"] not in blocks, f"two blocks marked {match['name']}"
        blocks[match["name"]] = match["body"]
    return blocks


def _checkout(tmp_path: Path, tenants: str) -> Path:
    """A folder like the user's: the repository's charts/, crds/, deploy/ and tenants.yaml."""
    for name in ("charts", "crds", "deploy"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "tenants.yaml").write_text(tenants)
    return tmp_path


def _env(cluster: KubectlCluster, helm: Helm) -> dict[str, str]:
    tools = find_tools()
    assert tools is not None
    path = os.pathsep.join([str(tools.helm.parent), str(tools.kubectl.parent),
                            os.environ.get("PATH", "")])  # fmt: skip
    return {**helm.env, "PATH": path, "KUBECONFIG": str(cluster.kubeconfig_path)}


@pytest.fixture
def readme_install(fleet_api: KubectlCluster, helm: Helm, tmp_path: Path) -> Iterator[
        subprocess.CompletedProcess[str]]:  # fmt: skip
    blocks = readme_blocks()
    assert {"tenants", "install"} <= set(blocks), "the chart README marks its install blocks"
    assert "helm install" in blocks["install"]
    folder = tmp_path / "checkout"
    folder.mkdir()
    _checkout(folder, blocks["tenants"])
    try:
        yield subprocess.run(["bash", "-euo", "pipefail", "-c", blocks["install"]], cwd=folder,
                             env=_env(fleet_api, helm), capture_output=True, text=True,
                             timeout=300, check=False)  # fmt: skip
    finally:
        helm.run("uninstall", RELEASE, "--namespace", NAMESPACE)
        fleet_api.kubectl("-n", NAMESPACE, "delete", "secret",
                          "inference-factory-router-tenants", "--ignore-not-found")  # fmt: skip
        fleet_api.kubectl("-n", FACTORY[0], "delete", "inferencefactory", FACTORY[1],
                          "--ignore-not-found", "--wait=false")  # fmt: skip
        install_fleet_api(fleet_api)


def test_readme_install_works_as_written(
    fleet_api: KubectlCluster, helm: Helm, readme_install: subprocess.CompletedProcess[str]
) -> None:
    done = readme_install
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads(helm("status", RELEASE, "--namespace", NAMESPACE, "-o", "json"))
    assert status["info"]["status"] == "deployed"
    # Pods are admitted in the `restricted` namespace and become Ready (kwok).
    wait_ready(fleet_api, NAMESPACE, "operator", 1)
    wait_ready(fleet_api, NAMESPACE, "router", 2)
    # The CRDs stay kubectl's: the release did not take them over.
    for crd in CRDS:
        meta = json.loads(fleet_api.kubectl("get", "crd", crd, "-o", "json"))["metadata"]
        assert (meta.get("annotations") or {}).get("meta.helm.sh/release-name") != RELEASE
    # The examples were applied: the factory exists in its namespace.
    wait_until(lambda: fleet_api.kubectl("-n", FACTORY[0], "get", "inferencefactory",
                                         FACTORY[1], "-o", "name", check=False).strip(),
               30, interval=0.5, what="the example factory")  # fmt: skip
    # The API server's address was looked up (no CIDR value given): the policies name it.
    policy = json.loads(fleet_api.kubectl("-n", NAMESPACE, "get", "networkpolicy",
                                          "inference-factory-router", "-o", "json"))  # fmt: skip
    cidrs = {peer["ipBlock"]["cidr"] for rule in policy["spec"]["egress"]
             for peer in rule["to"] if "ipBlock" in peer}  # fmt: skip
    assert cidrs and "0.0.0.0/0" not in cidrs and all(c.endswith(("/32", "/128")) for c in cidrs)
