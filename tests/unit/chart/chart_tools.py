"""Helpers of the chart tests: paths, the pinned helm/kubectl, rendering and parsing."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from factoryctl.toolchain import Toolchain, find_tools

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "inference-factory"
MONITORING = ROOT / "deploy" / "monitoring"
GITOPS = ROOT / "deploy" / "gitops"
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "ap-south-1")
# What every test render passes unless it tests the absence of it: the required region, and
# the API server's address (looked up by `helm install`; `helm template` cannot).
API_SERVER_CIDRS = ("--set", "networkPolicy.apiServer.cidrs={10.96.0.1/32}")
BASE_SET = ("--set", "router.region=eu-west-1", *API_SERVER_CIDRS)
Obj = dict[str, Any]


def toolchain() -> Toolchain:
    """The pinned binaries; a failure (not a skip) when absent: CI builds them first."""
    tools = find_tools()
    if tools is None:
        pytest.fail("the pinned toolchain (helm, kubectl) is not built: run `factoryctl dev tools`")
    return tools


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a tool with a deadline, output captured."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def helm_template(
    *args: str,
    release: str = "fleet",
    namespace: str = "inference-factory",
    base: tuple[str, ...] = BASE_SET,
) -> list[Obj]:
    """`helm template` of the chart, parsed into objects (fails the test on an error)."""
    done = run(
        [
            str(toolchain().helm),
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            *base,
            *args,
        ]
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def helm_template_error(*args: str) -> str:
    """stderr of a `helm template` that must fail."""
    done = run([str(toolchain().helm), "template", "fleet", str(CHART), *args])
    assert done.returncode != 0, "helm template should have failed"
    return done.stderr


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    """Objects of one kind."""
    return [o for o in objs if o.get("kind") == kind]


def by_name(objs: list[Obj], kind: str, suffix: str) -> Obj:
    """The one object of a kind whose name ends with suffix."""
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, [o["metadata"]["name"] for o in of_kind(objs, kind)]
    return found[0]
