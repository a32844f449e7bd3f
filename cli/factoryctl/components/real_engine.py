"""Component `real-engine`: real vLLM behind the topology's real-engine pools, or why not.

`prepare` (called by the `engines` component before it starts the agent) decides once per
`dev up` whether the real engine serves the pools marked `engine: vllm`, and records it in the
home state, where the engines agent reads it when it starts:

- off when the topology has no such pool, when `dev up --no-real-engine` (or
  `FACTORY_REAL_ENGINE=0`) says so, or when the machine has too little memory available
  (`MIN_AVAILABLE_GIB`: one engine takes about 3.3 GiB, and the rest of the fleet and its tests
  need room too); the simulator then serves those pools;
- on otherwise: the pinned vLLM environment and the tiny model are made if missing
  (`factoryctl dev vllm`, minutes the first time, cached by version).

The component itself comes last in `dev up`: it waits until every pod on a real-engine node
answers, so that the rest of the fleet comes up while vLLM loads (80-130 s on 2 cores), and
`dev status` shows whether the real engine is on, why, and its processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from factoryctl import procs
from factoryctl.agents.real_engine import PROCESS_PREFIX, RealEngineSetup, stop_all_recorded
from factoryctl.component import ComponentStatus, FleetContext, State, wait_until
from factoryctl.errors import ComponentError
from factoryctl.home import FleetHome
from factoryctl.topology import ENGINE_LABEL

MIN_AVAILABLE_GIB = 8.0
OFF_WORDS = {"0", "false", "no", "off"}
READY_DEADLINE_SECONDS = 900  # 80-130 s on 2 idle cores; minutes more on a busy machine
NO_POD_SECONDS = 120  # a real-engine node that no pod comes to is not waited for


def available_gib() -> float:
    """MemAvailable from /proc/meminfo, in GiB (0 if unreadable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def decide(ctx: FleetContext, asked: bool | None) -> tuple[bool, str]:
    """(on, why) for this fleet: `asked` is the --real-engine/--no-real-engine choice."""
    pools = ctx.topology.real_engine_pools()
    if not pools:
        return False, "no node pool of the topology has engine: vllm"
    if asked is False:
        return False, "turned off (--no-real-engine)"
    if asked is None and os.environ.get("FACTORY_REAL_ENGINE", "").lower() in OFF_WORDS:
        return False, "turned off (FACTORY_REAL_ENGINE=0)"
    memory = available_gib()
    if asked is None and memory < MIN_AVAILABLE_GIB:
        return False, (
            f"{memory:.1f} GiB of memory available, below {MIN_AVAILABLE_GIB:.0f} GiB "
            "(--real-engine starts it anyway)"
        )
    names = ", ".join(f"{region}/{pool.name}" for region, pool in pools)
    return True, f"real vLLM serves {names}"


def setup_of(home: FleetHome) -> RealEngineSetup | None:
    """The agent's RealEngineSetup when the home's fleet runs the real engine, else None."""
    from factoryctl import tiny_model  # noqa: PLC0415
    from factoryctl.vllm_env import find_tiny_model, find_vllm  # noqa: PLC0415

    if not (home.state().get("real_engine") or {}).get("on"):
        return None
    env = find_vllm()
    model = find_tiny_model(env) if env is not None else None
    if env is None or model is None:
        return None
    return RealEngineSetup(
        vllm=env.vllm,
        model=model,
        max_model_len=int(tiny_model.ARCHITECTURE["max_position_embeddings"]),
        work=home.root / "real-engines",
    )


def prepare(ctx: FleetContext) -> bool:
    """Decide, record and (when on) install; returns whether the real engine is on."""
    from factoryctl.vllm_env import ensure_tiny_model, ensure_vllm  # noqa: PLC0415

    on, why = decide(ctx, ctx.real_engine)
    if on:
        env = ensure_vllm(ctx.progress)
        ensure_tiny_model(env, ctx.progress)
    state = ctx.home.state()
    state["real_engine"] = {"on": on, "why": why}
    ctx.home.save_state(state)
    ctx.progress(f"[engines] real engine {'on' if on else 'off'}: {why}")
    return on


def stop_engines(ctx: FleetContext) -> None:
    """Stop every real engine of the fleet (the engines component's `down`)."""
    if stopped := stop_all_recorded(ctx.home):
        ctx.progress(f"[engines] {stopped} real vLLM engine(s) stopped")


def _real_pods(ctx: FleetContext) -> list[dict[str, Any]]:
    kubectl = ctx.kubectl()
    nodes = json.loads(
        kubectl.run("get", "nodes", "-l", f"{ENGINE_LABEL}=vllm", "-o", "json").stdout
    )["items"]
    names = {n["metadata"]["name"] for n in nodes}
    managed = "app.kubernetes.io/managed-by=inference-factory"
    pods = json.loads(kubectl.run("get", "pods", "-A", "-l", managed, "-o", "json").stdout)["items"]
    return [p for p in pods if p["spec"].get("nodeName") in names]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class RealEngineComponent:
    """Waits, at the end of `dev up`, until every real-engine pod's vLLM answers."""

    name = "real-engine"

    def up(self, ctx: FleetContext) -> None:
        if not (ctx.home.state().get("real_engine") or {}).get("on"):
            return
        try:
            wait_until(lambda: bool(_real_pods(ctx)), NO_POD_SECONDS,
                       "a pod on a real-engine node", interval=2)  # fmt: skip
        except ComponentError:
            return  # no factory uses the real-engine nodes: nothing to wait for
        ctx.progress(f"[{self.name}] vLLM is loading (80-130 s on 2 idle cores)")
        logs = ctx.home.logs_dir
        try:
            wait_until(lambda: all(_ready(p) for p in _real_pods(ctx)), READY_DEADLINE_SECONDS,
                       "the real vLLM engines to answer /health", interval=2)  # fmt: skip
        except ComponentError as exc:
            raise ComponentError(
                str(exc),
                hint=f"see {logs}/engines-agent.log and {logs}/{PROCESS_PREFIX}*.log; "
                "`factoryctl dev up --no-real-engine` runs the fleet without it",
            ) from exc

    def down(self, ctx: FleetContext) -> None:
        """The engines themselves are stopped by the `engines` component."""

    def status(self, ctx: FleetContext) -> ComponentStatus:
        decided = ctx.home.state().get("real_engine") or {}
        if not decided:
            return ComponentStatus(self.name, "n/a", "not decided (fleet not up)")
        engines = [n for n in procs.names(ctx.home) if n.startswith(PROCESS_PREFIX)]
        running = [n for n in engines if procs.running_pid(ctx.home, n) is not None]
        detail = f"{'on' if decided['on'] else 'off'}: {decided['why']}"
        if running or decided["on"]:
            detail += f"; {len(running)} vLLM process(es)"
        state: State = "running" if decided["on"] else "n/a"
        if decided["on"] and setup_of(ctx.home) is None:
            state, detail = (
                "degraded",
                detail
                + (
                    "; the vLLM environment or the tiny model is missing: run `factoryctl dev vllm`"
                ),
            )
        return ComponentStatus(self.name, state, detail,
                               data={"on": decided["on"], "engines": len(running)})  # fmt: skip
