"""Component `engines`: one `factory-sim` process per region, and the engines agent.

Before the agent starts, `real_engine.prepare` decides whether real vLLM serves the
topology's real-engine pools (and installs it if so); `down` stops the real engines too.

The agent (`factoryctl dev engines-agent`, see `factoryctl.agents.engines`) puts a simulated
engine behind every running engine pod, in the process of the pod's region, so that killing
a region's process takes that region's engines down, as a regional outage would; the pod
turns Ready once its engine answers.
"""

from __future__ import annotations

import shutil
import sys
from functools import partial
from pathlib import Path

import httpx

from factoryctl import procs
from factoryctl.component import ComponentStatus, FleetContext, State, http_ok, wait_until
from factoryctl.components import real_engine
from factoryctl.errors import ComponentError

AGENT = "engines-agent"


def sim_process(region: str) -> str:
    return f"sim-{region}"


def control_url(ctx: FleetContext, region: str) -> str:
    return f"http://127.0.0.1:{ctx.home.port(sim_process(region))}"


def _healthy(url: str) -> bool:
    return http_ok(f"{url}/healthz")


class EnginesComponent:
    """Starts the per-region simulator processes and the agent that wires them to pods."""

    name = "engines"

    def up(self, ctx: FleetContext) -> None:
        sim = shutil.which("factory-sim", path=str(Path(sys.executable).parent)) or shutil.which(
            "factory-sim"
        )
        if sim is None:
            raise ComponentError("factory-sim is not installed", hint="run ./scripts/bootstrap.sh")
        for region in ctx.topology.regions:
            port = ctx.home.port(sim_process(region.name))
            procs.start(
                ctx.home, sim_process(region.name), [sim, "serve", "--control-port", str(port)]
            )
        for region in ctx.topology.regions:
            url = control_url(ctx, region.name)
            wait_until(partial(_healthy, url), 30, f"the simulator of {region.name}")
        before = (ctx.home.state().get("real_engine") or {}).get("on")
        on = real_engine.prepare(ctx)
        if on != before and procs.running_pid(ctx.home, AGENT) is not None:
            # The agent reads the choice when it starts: start it again (it adopts the
            # engines that run).
            procs.stop(ctx.home, AGENT)
        if not on:
            real_engine.stop_engines(ctx)  # those of an earlier `dev up` with it on
        procs.start(
            ctx.home,
            AGENT,
            [sys.executable, "-m", "factoryctl.main", "dev", "engines-agent",
             "--home", str(ctx.home.root)],
        )  # fmt: skip

    def down(self, ctx: FleetContext) -> None:
        procs.stop(ctx.home, AGENT)
        real_engine.stop_engines(ctx)
        for region in ctx.topology.regions:
            procs.stop(ctx.home, sim_process(region.name))

    def status(self, ctx: FleetContext) -> ComponentStatus:
        down = [r.name for r in ctx.topology.regions if not _healthy(control_url(ctx, r.name))]
        agent = procs.running_pid(ctx.home, AGENT) is not None
        if not agent and len(down) == len(ctx.topology.regions):
            return ComponentStatus(self.name, "stopped", "not running")
        engines = 0
        for region in ctx.topology.regions:
            if region.name not in down:
                listed = httpx.get(f"{control_url(ctx, region.name)}/engines", timeout=2)
                engines += len(listed.json()["engines"])
        detail = f"{engines} engines" + (f"; simulators down in {', '.join(down)}" if down else "")
        if not agent:
            detail += "; agent not running"
        state: State = "running" if agent and not down else "degraded"
        return ComponentStatus(self.name, state, detail, data={"engines": engines})
