"""Component `router`: `factory-router` in front of the local fleet, with demo tenants.

On first `up` the component creates demo tenants (random keys from `secrets`) and an
admin key, and keeps them in the fleet home: the router's tenants file holds only their
SHA-256 hashes (`<home>/router/tenants.yaml`); the plaintext keys live only in
`state.json`, which is what `factoryctl dev env` prints. Later `up`s keep the same keys.

The router discovers the sample factories through the fleet's API server (FleetRegions,
InferenceFactory status, EndpointSlices, the pods' `inference.factory.dev/address`), reads
load from the fleet's Prometheus, shares the tenants' quotas through the fleet's Redis
(component `redis`, `--quota-redis-url`), and takes the round trips of the topology file (`--rtt`),
so its scores use the same matrix as the simulated engines' injected delay.
`router_argv` is shared with benchmarks that run more routers (one per client region).

Two ports, both on 127.0.0.1: `router_url`, the tenants' (the API, `/healthz`, a bare
`/readyz`), and `router_admin_url` (`/readyz` details, `/metrics`, which the fleet's
Prometheus scrapes, and `/admin/explain`).
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

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

ROUTER_REGION = "eu-west-1"
READY_TIMEOUT_S = 90.0  # covers the first list of four kinds on a busy 2-core machine
# The local fleet scrapes every second (docs/architecture.md, "The local fleet"): the router
# reads a snapshot every second too, and calls it stale after five missed ones.
PROMETHEUS_INTERVAL_S = 1.0
STALE_AFTER_S = 5.0

# Demo tenants and the jurisdictions each may use.
DEMO_TENANTS: dict[str, list[str]] = {
    "eu-only": ["EU"],
    "us-only": ["US"],
    "in-only": ["IN"],
    "global": ["EU", "US", "IN"],
}


# The operator's rollout gates: a tenant of its own, allowed every jurisdiction of the
# topology and `admin` (it may send x-factory-target: golden prompts to one revision of one
# pool). Its key is kept apart from the demo tenants' (`rollout_gates_key` in the state).
GATES_TENANT = "factory-operator"


def gates_key(ctx: FleetContext) -> str:
    """The rollout gates' key, created once and kept in the home state (the operator's
    component asks for it before the router's writes the tenants file)."""
    env: dict[str, Any] = ctx.home.state().get("env", {})
    key = env.get("rollout_gates_key")
    if not key:
        key = secrets.token_urlsafe(32)
        record_env(ctx, rollout_gates_key=key)
    return str(key)


def router_dir(ctx: FleetContext) -> Path:
    return ctx.home.root / "router"


def tenants_file(ctx: FleetContext) -> Path:
    return router_dir(ctx) / "tenants.yaml"


def rtt_file(ctx: FleetContext) -> Path:
    return router_dir(ctx) / "rtt.yaml"


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def demo_credentials(ctx: FleetContext) -> tuple[str, dict[str, dict[str, Any]]]:
    """The admin key and the demo tenants, created once and then kept in the home state."""
    env: dict[str, Any] = ctx.home.state().get("env", {})
    admin = env.get("admin_key") or secrets.token_urlsafe(32)
    known: dict[str, dict[str, Any]] = env.get("tenants") or {}
    tenants = {
        name: {
            "api_key": (known.get(name) or {}).get("api_key") or secrets.token_urlsafe(32),
            "jurisdictions": list(codes),
        }
        for name, codes in DEMO_TENANTS.items()
    }
    return str(admin), tenants


def tenants_doc(
    admin_key: str,
    tenants: dict[str, dict[str, Any]],
    gates: tuple[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The router's tenants file: hashes only, never a plaintext key. ``gates``: the rollout
    gates' key and jurisdictions (an admin tenant, ``GATES_TENANT``)."""
    doc: dict[str, Any] = {
        "admin_keys_sha256": [_sha256(admin_key)],
        "tenants": [
            {
                "name": name,
                "jurisdictions": t["jurisdictions"],
                "api_keys_sha256": [_sha256(t["api_key"])],
            }
            for name, t in tenants.items()
        ],
    }
    if gates is not None:
        key, jurisdictions = gates
        doc["tenants"].append({
            "name": GATES_TENANT,
            "jurisdictions": jurisdictions,
            "api_keys_sha256": [_sha256(key)],
            "admin": True,
        })  # fmt: skip
    return doc


def rtt_doc(ctx: FleetContext) -> dict[str, dict[str, float]]:
    """The topology's round trips as `{region: {region: ms}}`, own region included."""
    names = [r.name for r in ctx.topology.regions]
    return {a: {b: ctx.topology.rtt_ms(a, b) for b in names} for a in names}


def _write(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(doc, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(path)  # atomic: the router's reload never sees half a file


def router_argv(
    ctx: FleetContext,
    *,
    region: str,
    port: int,
    admin_port: int = 0,
    policy: str = "score",
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The command line of a router in this fleet (the files must have been written);
    `admin_port` 0: any free port (for routers whose metrics nobody reads)."""
    binary = shutil.which("factory-router", path=str(Path(sys.executable).parent))
    if binary is None:
        raise ComponentError("factory-router is not installed", hint="run ./scripts/bootstrap.sh")
    argv = [
        binary,
        "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin_port}",
        "--region", region,
        "--tenants", str(tenants_file(ctx)),
        "--kubeconfig", str(ctx.home.kubeconfig),
        "--rtt", str(rtt_file(ctx)),
        "--policy", policy,
    ]  # fmt: skip
    prometheus = ctx.home.state().get("env", {}).get("prometheus_url")
    if prometheus:
        argv += [
            "--prometheus-url", str(prometheus),
            "--prometheus-interval", str(PROMETHEUS_INTERVAL_S),
            "--stale-after", str(STALE_AFTER_S),
        ]  # fmt: skip
    redis = ctx.home.state().get("env", {}).get("redis_url")
    if redis:
        argv += ["--quota-redis-url", str(redis)]  # quotas shared by every router
    return [*argv, *extra]


def ready(url: str) -> bool:
    """True when the router's /readyz (the bare one, on the tenants' port) says it can
    route (backends discovered)."""
    return http_ok(f"{url}/readyz")


class RouterComponent:
    """Runs one router (region eu-west-1) with Kubernetes discovery and demo tenants."""

    name = "router"

    def _url(self, ctx: FleetContext) -> str:
        return f"http://127.0.0.1:{ctx.home.port('router')}"

    def _admin_url(self, ctx: FleetContext) -> str:
        return f"http://127.0.0.1:{ctx.home.port('router-admin')}"

    def write_files(self, ctx: FleetContext) -> tuple[str, dict[str, dict[str, Any]]]:
        admin, tenants = demo_credentials(ctx)
        jurisdictions = sorted({r.jurisdiction for r in ctx.topology.regions})
        _write(tenants_file(ctx), tenants_doc(admin, tenants, (gates_key(ctx), jurisdictions)))
        _write(rtt_file(ctx), rtt_doc(ctx))
        return admin, tenants

    def up(self, ctx: FleetContext) -> None:
        from factoryctl.components.prometheus import PrometheusComponent  # noqa: PLC0415

        admin, tenants = self.write_files(ctx)
        argv = router_argv(
            ctx,
            region=ROUTER_REGION,
            port=ctx.home.port("router"),
            admin_port=ctx.home.port("router-admin"),
        )
        procs.start(ctx.home, self.name, argv)
        url = self._url(ctx)
        try:
            wait_until(lambda: ready(url), READY_TIMEOUT_S, "the router's /readyz")
        except ComponentError as exc:
            exc.hint = f"see {ctx.home.logs_dir / 'router.log'}"
            raise
        record_env(
            ctx,
            router_url=url,
            router_admin_url=self._admin_url(ctx),
            admin_key=admin,
            tenants=tenants,
        )
        PrometheusComponent().reload(ctx)  # scrape the router too (its admin port)

    def down(self, ctx: FleetContext) -> None:
        procs.stop(ctx.home, self.name)

    def status(self, ctx: FleetContext) -> ComponentStatus:
        url = self._url(ctx)
        detail = f"{url} (admin {self._admin_url(ctx)})"
        return process_status(ctx, self.name, ready(url), detail)
