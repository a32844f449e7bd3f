"""The local fleet as a sequence of named components.

`factoryctl dev up` brings components up in the order of `COMPONENTS`; `dev down` takes them
down in reverse; `dev status` asks each for its status. A component is a small class with
`up`, `down` and `status`; every `up` is idempotent, so running `up` twice is harmless.

To add a part of the fleet (CRDs, operator, engines, Prometheus, router, ...), write a
component in `factoryctl/components/` and add it to `COMPONENTS` below, after the parts it
needs.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
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


def all_components() -> list[Component]:
    """The fleet's components in start order. Later parts of the fleet are added here."""
    from factoryctl.components.cluster import ClusterComponent  # noqa: PLC0415
    from factoryctl.components.engines import EnginesComponent  # noqa: PLC0415
    from factoryctl.components.nodes import NodesComponent  # noqa: PLC0415
    from factoryctl.components.operator import OperatorComponent  # noqa: PLC0415
    from factoryctl.components.prometheus import PrometheusComponent  # noqa: PLC0415
    from factoryctl.components.real_engine import RealEngineComponent  # noqa: PLC0415
    from factoryctl.components.redis import RedisComponent  # noqa: PLC0415
    from factoryctl.components.resources import CrdsComponent, SamplesComponent  # noqa: PLC0415
    from factoryctl.components.router import RouterComponent  # noqa: PLC0415
    from factoryctl.components.toolchain import ToolchainComponent  # noqa: PLC0415

    return [
        ToolchainComponent(),
        ClusterComponent(),
        NodesComponent(),
        CrdsComponent(),
        SamplesComponent(),
        OperatorComponent(),
        EnginesComponent(),
        PrometheusComponent(),
        RedisComponent(),  # the router's shared quotas
        RouterComponent(),
        RealEngineComponent(),
    ]


def select(names: Sequence[str] | None) -> list[Component]:
    """The components named (in fleet order), or all of them."""
    components = all_components()
    if not names:
        return components
    known = {c.name for c in components}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ComponentError(
            f"unknown component(s): {', '.join(unknown)}", hint=f"known: {', '.join(known)}"
        )
    return [c for c in components if c.name in names]


def up(ctx: FleetContext, names: Sequence[str] | None = None) -> None:
    ctx.selected = frozenset(names) if names else None
    for component in select(names):
        started = time.monotonic()
        ctx.progress(f"[{component.name}] starting")
        component.up(ctx)
        ctx.progress(f"[{component.name}] ready ({time.monotonic() - started:.1f}s)")


def down(ctx: FleetContext) -> None:
    for component in reversed(all_components()):
        component.down(ctx)
        ctx.progress(f"[{component.name}] stopped")


def status(ctx: FleetContext) -> list[ComponentStatus]:
    return [component.status(ctx) for component in all_components()]
