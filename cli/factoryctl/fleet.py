"""The local fleet as a sequence of named components.

`factoryctl dev up` brings components up in the order of `all_components()`; `dev down` takes them
down in reverse; `dev status` asks each for its status. A component is a small class with
`up`, `down` and `status`; every `up` is idempotent, so running `up` twice is harmless.

To add a part of the fleet (CRDs, operator, engines, Prometheus, router, ...), write a
component in `factoryctl/components/` (it implements `factoryctl.component.Component`) and add
it to `all_components()` below, after the parts it needs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from factoryctl.component import (
    Component,
    ComponentStatus,
    FleetContext,
    Kubectl,
    Progress,
    State,
    http_ok,
    process_status,
    record_env,
    wait_until,
)
from factoryctl.components.cluster import ClusterComponent
from factoryctl.components.engines import EnginesComponent
from factoryctl.components.nodes import NodesComponent
from factoryctl.components.operator import OperatorComponent
from factoryctl.components.prometheus import PrometheusComponent
from factoryctl.components.real_engine import RealEngineComponent
from factoryctl.components.redis import RedisComponent
from factoryctl.components.resources import CrdsComponent, SamplesComponent
from factoryctl.components.router import RouterComponent
from factoryctl.components.toolchain import ToolchainComponent
from factoryctl.errors import ComponentError

# The shared types live in factoryctl.component; they are re-exported here for the callers
# that drive a fleet (main, report, tests, bench).
__all__ = [
    "Component",
    "ComponentStatus",
    "FleetContext",
    "Kubectl",
    "Progress",
    "State",
    "all_components",
    "down",
    "http_ok",
    "process_status",
    "record_env",
    "select",
    "status",
    "up",
    "wait_until",
]


def all_components() -> list[Component]:
    """The fleet's components in start order. Later parts of the fleet are added here."""
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
