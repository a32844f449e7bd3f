"""The whole local fleet, end to end, in a fleet home of the session's own.

`factoryctl dev up` brings up every component (control plane, nodes, CRDs, sample
factories, operator, engines, Prometheus, router); the tests use it as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import KubectlCluster, session_home

# A cold fleet on 2 busy cores, with the real vLLM engine loading (up to 15 min of its own).
UP_TIMEOUT = 1800


@dataclass
class Fleet:
    home: Path
    env: dict[str, Any]
    cluster: KubectlCluster

    def factoryctl(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "factoryctl.main", *args],
            env={**os.environ, "FACTORY_HOME": str(self.home)},
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    home = session_home("e2e-fleet")
    env = {**os.environ, "FACTORY_HOME": str(home)}
    factoryctl = [sys.executable, "-m", "factoryctl.main", "dev"]
    up = subprocess.run([*factoryctl, "up"], env=env, capture_output=True, text=True,
                        timeout=UP_TIMEOUT, check=False)  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr[-5000:]
        values = json.loads(subprocess.run([*factoryctl, "env", "--json"], env=env,
                                           capture_output=True, text=True, check=True,
                                           timeout=60).stdout)  # fmt: skip
        from factoryctl.toolchain import find_tools  # noqa: PLC0415

        tools = find_tools()
        assert tools is not None
        cluster = KubectlCluster("e2e", Path(values["kubeconfig"]), str(tools.kubectl))
        yield Fleet(home, values, cluster)
    finally:
        subprocess.run([*factoryctl, "down"], env=env, timeout=300, check=False)
        shutil.rmtree(home, ignore_errors=True)
