"""Component `operator`: `factory-operator` as a process against the local API server.

Its autoscaler reads the fleet's Prometheus (started after it; the URL is known in advance,
and until Prometheus answers autoscaled pools hold their replicas), deciding every
`AUTOSCALE_INTERVAL` seconds: simulated engines start in seconds, so the local fleet
decides faster than the operator's default. Only factories with `spec.autoscaling` scale.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from factoryctl import procs
from factoryctl.component import (
    ComponentStatus,
    FleetContext,
    http_ok,
    process_status,
    record_env,
    wait_until,
)
from factoryctl.components.router import gates_key
from factoryctl.errors import ComponentError

AUTOSCALE_INTERVAL = 5
# The rollout gates' clock: a due step is judged within this many seconds.
ROLLOUT_INTERVAL = 5


class OperatorComponent:
    """Runs the operator cluster-wide, with /metrics and liveness on 127.0.0.1."""

    name = "operator"

    def _health_url(self, ctx: FleetContext) -> str:
        return f"http://127.0.0.1:{ctx.home.port('operator-liveness')}/healthz"

    def _healthy(self, ctx: FleetContext) -> bool:
        return http_ok(self._health_url(ctx))

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
             "--liveness", self._health_url(ctx),
             "--prometheus-url", f"http://127.0.0.1:{ctx.home.port('prometheus')}",
             "--autoscale-interval", str(AUTOSCALE_INTERVAL),
             # The rollout gates' golden prompts go through the fleet's router (started
             # after the operator, on a port known in advance) with a key of their own.
             "--router-url", f"http://127.0.0.1:{ctx.home.port('router')}",
             "--rollout-interval", str(ROLLOUT_INTERVAL)],
            env={"KUBECONFIG": str(ctx.home.kubeconfig),
                 "FACTORY_OPERATOR_ROUTER_ADMIN_KEY": gates_key(ctx)},
        )  # fmt: skip
        wait_until(lambda: self._healthy(ctx), 60, "the operator's liveness endpoint")
        record_env(ctx, operator_metrics=f"127.0.0.1:{metrics_port}")

    def down(self, ctx: FleetContext) -> None:
        procs.stop(ctx.home, self.name)

    def status(self, ctx: FleetContext) -> ComponentStatus:
        return process_status(ctx, self.name, self._healthy(ctx), self._health_url(ctx))
