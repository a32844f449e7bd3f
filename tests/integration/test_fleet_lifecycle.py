"""`factoryctl dev up` twice, then `dev down`, in a fleet home of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.procinfo import listening_ports, pids_mentioning
from tests.support.waiting import wait_until


def _factoryctl(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factoryctl.main", "dev", *args],
        env={**os.environ, "FACTORY_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_up_twice_then_down_leaves_nothing_behind(tmp_path: Path) -> None:
    home = tmp_path / "fleet"
    first = _factoryctl(home, "up", "--only", "toolchain,cluster,nodes")
    assert first.returncode == 0, first.stderr
    pids = pids_mentioning(str(home))
    assert pids, "the cluster's processes should mention the fleet home"
    ports = listening_ports(pids)
    assert ports, "the control plane should listen somewhere"
    assert all(p != 0 for p in ports)

    second = _factoryctl(home, "up", "--only", "toolchain,cluster,nodes")
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stderr
    assert pids_mentioning(str(home)) == pids, "a second `up` must not start anything new"

    status = _factoryctl(home, "status", "--json")
    states = {c["name"]: c["state"] for c in json.loads(status.stdout)}
    assert states["cluster"] == "running" and states["nodes"] == "running", states
    env = json.loads(_factoryctl(home, "env", "--json").stdout)
    assert Path(env["kubeconfig"]).is_file()

    down = _factoryctl(home, "down")
    assert down.returncode == 0, down.stderr
    wait_until(lambda: not pids_mentioning(str(home)), 30, what="no process of the fleet")
    assert not (ports & listening_ports()), "a port of the stopped fleet still listens"
    states = {
        c["name"]: c["state"] for c in json.loads(_factoryctl(home, "status", "--json").stdout)
    }
    assert states["cluster"] == "stopped", states
