"""Component `prometheus`: a real Prometheus (Debian's package) scraping the local fleet.

Debian builds Prometheus without Kubernetes service discovery, so engines are discovered
through a file: the engines agent writes `<home>/prometheus/targets/engines.json`, one
target per Ready engine pod at its simulated engine's address, labelled with the fleet's
label set (namespace, factory, pool, region, jurisdiction, pod; vLLM adds model_name and
engine): the same labels the chart's PodMonitor gives in a real cluster. Prometheus watches
the file, so a scaled pool shows within a scrape interval. The operator and the router are
scraped too. Scrapes run every second, as docs/architecture.md ("The local fleet") says.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import yaml

from factoryctl import procs
from factoryctl.component import (
    ComponentStatus,
    FleetContext,
    http_ok,
    process_status,
    record_env,
    wait_until,
)
from factoryctl.errors import ComponentError
from factoryctl.topology import REPO_ROOT

SCRAPE_INTERVAL = "1s"


RULES_FILE = REPO_ROOT / "deploy" / "monitoring" / "alerts.yaml"


def targets_file(ctx: FleetContext) -> Path:
    """Where the engines agent writes the engines' scrape targets."""
    return ctx.home.root / "prometheus" / "targets" / "engines.json"


def prometheus_config(ctx: FleetContext) -> dict[str, Any]:
    env = ctx.home.state().get("env", {})
    static_jobs = []
    # The router's /metrics is on its admin listener, not on the port tenants use.
    jobs = (("factory-operator", "operator_metrics"), ("factory-router", "router_admin_url"))
    for job, key in jobs:
        if address := env.get(key):
            static_jobs.append(
                {
                    "job_name": job,
                    "static_configs": [{"targets": [str(address).removeprefix("http://")]}],
                }
            )
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        # The project's own alert and recording rules, so the local fleet shows real alerts.
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {
                "job_name": "vllm",
                "file_sd_configs": [{"files": [str(targets_file(ctx))]}],
            },
            *static_jobs,
        ],
    }


class PrometheusComponent:
    """Runs `prometheus` bound to 127.0.0.1 with its data in the fleet home."""

    name = "prometheus"

    def _url(self, ctx: FleetContext) -> str:
        return f"http://127.0.0.1:{ctx.home.port('prometheus')}"

    def _ready(self, ctx: FleetContext) -> bool:
        return http_ok(f"{self._url(ctx)}/-/ready")

    def write_config(self, ctx: FleetContext) -> bool:
        """Write the configuration; True when it changed."""
        path = ctx.home.root / "prometheus" / "prometheus.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(prometheus_config(ctx), sort_keys=False)
        if path.exists() and path.read_text() == text:
            return False
        path.write_text(text)
        return True

    def reload(self, ctx: FleetContext) -> None:
        """Apply a changed configuration to a running Prometheus."""
        if self.write_config(ctx) and self._ready(ctx):
            httpx.post(f"{self._url(ctx)}/-/reload", timeout=10).raise_for_status()

    def up(self, ctx: FleetContext) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise ComponentError(
                "prometheus is not installed", hint="run ./scripts/bootstrap.sh (apt-get)"
            )
        # Prometheus watches the targets folder only if it exists when the config loads.
        targets = targets_file(ctx)
        targets.parent.mkdir(parents=True, exist_ok=True)
        if not targets.exists():
            targets.write_text("[]")
        root = ctx.home.root / "prometheus"
        if procs.running_pid(ctx.home, self.name) is not None and self._ready(ctx):
            self.reload(ctx)
        else:
            self.write_config(ctx)
            procs.start(
                ctx.home,
                self.name,
                [
                    binary,
                    f"--config.file={root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={root / 'data'}",
                    "--storage.tsdb.retention.time=6h",
                    f"--web.listen-address=127.0.0.1:{ctx.home.port('prometheus')}",
                    "--web.enable-lifecycle",
                ],
            )
            wait_until(lambda: self._ready(ctx), 60, "Prometheus to be ready")
        record_env(ctx, prometheus_url=self._url(ctx))

    def down(self, ctx: FleetContext) -> None:
        procs.stop(ctx.home, self.name)

    def status(self, ctx: FleetContext) -> ComponentStatus:
        return process_status(ctx, self.name, self._ready(ctx), self._url(ctx))
