"""Component `operator`: `factory-operator` as a process against the local API server."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import httpx

from factoryctl import procs
from factoryctl.errors import ComponentError
from factoryctl.fleet import ComponentStatus, FleetContext, wait_until


class OperatorComponent:
    """Runs the operator cluster-wide, with /metrics and liveness on 127.0.0.1."""

    name = "operator"

    def _health_url(self, ctx: FleetContext) -> str:
        return f"http://127.0.0.1:{ctx.home.port('operator-liveness')}/healthz"

    def _healthy(self, ctx: FleetContext) -> bool:
        try:
            return httpx.get(self._health_url(ctx), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def up(self, ctx: FleetContext) -> None:
        binary = shutil.which("factory-operator", path=str(Path(sys.executable).parent))
        if binary is None:
            raise ComponentError("factory-operator is not installed",
                                 hint="run ./scripts/bootstrap.sh")  # fmt: skip
        metrics_port = ctx.home.port("operator-metrics")
        procs.start(
            ctx.home,
            self.name,
            [binary, "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port),
             "--liveness", self._health_url(ctx)],
            env={"KUBECONFIG": str(ctx.home.kubeconfig)},
        )  # fmt: skip
        wait_until(lambda: self._healthy(ctx), 60, "the operator's liveness endpoint")
        state = ctx.home.state()
        state.setdefault("env", {})["operator_metrics"] = f"127.0.0.1:{metrics_port}"
        ctx.home.save_state(state)

    def down(self, ctx: FleetContext) -> None:
        procs.stop(ctx.home, self.name)

    def status(self, ctx: FleetContext) -> ComponentStatus:
        if procs.running_pid(ctx.home, self.name) is None:
            return ComponentStatus(self.name, "stopped", "not running")
        if not self._healthy(ctx):
            return ComponentStatus(self.name, "degraded", "liveness endpoint not answering")
        return ComponentStatus(self.name, "running", self._health_url(ctx))
