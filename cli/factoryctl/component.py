"""What a part of the local fleet is, and what every part is given: the types and helpers that
the components (`factoryctl/components/`) share.

`Component` is the protocol (a name, `up`, `down`, `status`), `FleetContext` what each call
receives (the fleet home, the topology, the pinned tools, progress output), `ComponentStatus`
what `status` returns. `factoryctl.fleet` puts the components in order and runs them; the
components import this module, never `factoryctl.fleet` (`.importlinter`: factoryctl layers),
so the fleet can import every component at the top of its module.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import httpx

from factoryctl import procs
from factoryctl.errors import ComponentError
from factoryctl.home import FleetHome
from factoryctl.toolchain import Toolchain, ensure_tools, find_tools
from factoryctl.topology import Topology

Progress = Callable[[str], None]
State = Literal["running", "stopped", "degraded", "n/a"]


@dataclass
class ComponentStatus:
    """What one component reports."""

    name: str
    state: State
    detail: str = ""
    data: dict[str, object] = field(default_factory=dict)


class Kubectl:
    """kubectl against the fleet's kubeconfig, with a timeout on every call."""

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def run(
        self, *args: str, input_text: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args]
        try:
            done = subprocess.run(
                cmd, input=input_text, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ComponentError(f"kubectl {' '.join(args)} timed out after {timeout}s") from exc
        if check and done.returncode != 0:
            raise ComponentError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done


class FleetContext:
    """Everything a component needs: the home, the topology, the tools, progress output."""

    def __init__(self, home: FleetHome, topology: Topology, progress: Progress) -> None:
        self.home = home
        self.topology = topology
        self.progress = progress
        self._tools: Toolchain | None = None
        # The components `up` brings up this time (None: all of them), so that one can
        # prepare for another (the cluster gates engine pods only if engines will run).
        self.selected: frozenset[str] | None = None
        # `dev up --real-engine/--no-real-engine`; None: on when the machine has the memory.
        self.real_engine: bool | None = None

    @property
    def tools(self) -> Toolchain:
        """The pinned toolchain, built on first use if missing."""
        if self._tools is None:
            self._tools = ensure_tools(self.progress)
        return self._tools

    def tools_if_present(self) -> Toolchain | None:
        """The toolchain without building anything (for status and down)."""
        if self._tools is None:
            self._tools = find_tools()
        return self._tools

    def kubectl(self) -> Kubectl:
        return Kubectl(self.tools.kubectl, self.home.kubeconfig)


class Component(Protocol):
    """One named part of the local fleet."""

    name: str

    def up(self, ctx: FleetContext) -> None: ...

    def down(self, ctx: FleetContext) -> None: ...

    def status(self, ctx: FleetContext) -> ComponentStatus: ...


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
) -> None:
    """Poll `predicate` until it holds; raise ComponentError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ComponentError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    """Whether `url` answers 200 within two seconds (health and readiness probes)."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def record_env(ctx: FleetContext, **values: object) -> None:
    """Keep endpoints in the home state, where `factoryctl dev env` finds them."""
    state = ctx.home.state()
    state.setdefault("env", {}).update(values)
    ctx.home.save_state(state)


def process_status(ctx: FleetContext, name: str, healthy: bool, detail: str) -> ComponentStatus:
    """The status of a component that is one process with a health endpoint."""
    if procs.running_pid(ctx.home, name) is None:
        return ComponentStatus(name, "stopped", "not running")
    if not healthy:
        return ComponentStatus(name, "degraded", f"not healthy: {detail}")
    return ComponentStatus(name, "running", detail)
