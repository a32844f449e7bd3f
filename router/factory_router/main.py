"""`factory-router`: flags and environment (pydantic-settings), start-up checks, lifecycle.

Every flag is also an environment variable, `FACTORY_ROUTER_<NAME>` (e.g.
`FACTORY_ROUTER_PROMETHEUS_URL`). Start-up fails (exit 2) on a missing, empty or invalid
tenants file, on a missing/invalid backends file, or without exactly one backend source:
the router never starts in an allow-all or empty state by accident.

`--listen` is where tenants connect (the API, a bare health and readiness check);
`--admin-listen` where readiness details, `/metrics` and `/admin/explain` are served
(loopback by default: open it to the network only where Prometheus and operators are).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from factory_router.app.logs import AccessLog, setup_logging
from factory_router.app.server import RouterServer, create_app
from factory_router.app.state import RouterState
from factory_router.discovery.static import load_fleet_file
from factory_router.policy.config import (
    EjectionConfig,
    FlowConfig,
    HoldConfig,
    Limits,
    RetryBudgetConfig,
    RouterConfig,
    ScoringConfig,
    Timeouts,
)
from factory_router.policy.errors import PolicyError
from factory_router.policy.fleet import Fleet, RttMatrix
from factory_router.policy.policies import PolicyName
from factory_router.policy.tenants import load_endpoint_key, load_tenants_text
from factory_router.quota.service import QuotaConfig

log = logging.getLogger("factory_router.main")
_T, _L, _S, _R, _H = Timeouts(), Limits(), ScoringConfig(), RouterConfig(), HoldConfig()
_Q = QuotaConfig()
_F = FlowConfig()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FACTORY_ROUTER_",
        cli_kebab_case=True,
        cli_prog_name="factory-router",
        cli_implicit_flags=True,
    )

    listen: str = Field("127.0.0.1:8080", description="host:port for tenants (the API)")
    admin_listen: str = Field(
        "127.0.0.1:9091", description="host:port for /metrics, /readyz details, /admin/*"
    )
    region: str = Field(description="this router's region (the default client region)")
    tenants: Path = Field(description="tenants YAML (reloaded when it changes)")
    backends: Path | None = Field(None, description="static backends YAML (reloaded)")
    kubeconfig: Path | None = Field(None, description="discover backends from Kubernetes")
    in_cluster: bool = Field(False, description="discover from Kubernetes, in-cluster")
    rtt: Path | None = Field(None, description="RTT matrix YAML {region: {region: ms}}")
    prometheus_url: str | None = Field(None, description="Prometheus for load snapshots")
    policy: Literal["score", "round-robin", "least-request"] = Field(
        "score", description="ranking among compliant backends"
    )
    connect_timeout: float = Field(_T.connect, gt=0)
    first_byte_timeout: float = Field(_T.first_byte, gt=0, description="stall -> 504")
    idle_timeout: float = Field(_T.idle, gt=0, description="max gap between chunks")
    grace_period: float = Field(_T.grace_period, ge=0, description="shutdown drain time")
    max_body_bytes: int = Field(_L.max_body_bytes, gt=0)
    max_head_bytes: int = Field(_L.max_head_bytes, gt=0, description="request line + headers")
    max_client_connections: int = Field(
        _L.max_client_connections, gt=0, description="client connections open at once; more: closed"
    )
    client_idle_timeout: float = Field(
        _T.client_idle, gt=0, description="client connection between requests, or not reading"
    )
    client_request_timeout: float = Field(
        _T.client_request, gt=0, description="a client's request, first byte to last"
    )
    max_connections: int = Field(_L.max_connections, gt=0)
    max_connections_per_host: int = Field(_L.max_connections_per_host, gt=0)
    max_attempts: int = Field(_L.max_attempts, ge=1, description="per request, first included")
    tenant_max_concurrent_requests: int = Field(
        _L.tenant_max_concurrent_requests,
        ge=0,
        description="requests one tenant may have in flight (tenants file may override); "
        "beyond: 429; 0: no limit",
    )
    hold_max_requests: int = Field(
        _H.max_requests,
        ge=0,
        description="requests held per model while its compliant pools scale from zero; "
        "beyond: 503 with Retry-After; 0: never hold",
    )
    hold_timeout: float = Field(
        _H.timeout_seconds,
        ge=0,
        description="seconds a request is held for a pool scaling from zero; then 503 with "
        "Retry-After (x-factory-hold-timeout narrows it per request)",
    )
    hold_retry_after: int = Field(
        _H.retry_after_seconds, ge=1, description="Retry-After seconds on a hold's 503"
    )
    flow_control: bool = Field(
        _F.enabled,
        description="when every compliant engine is at capacity, requests wait in the router "
        "by the tenants' priority class, tenants of a class in turn (off by default)",
    )
    flow_max_queued: int = Field(
        _F.max_queued,
        ge=0,
        description="requests waiting at once for capacity; one more sheds the lowest class "
        "first (503 capacity_shed)",
    )
    flow_max_wait_interactive: float = Field(
        _F.max_wait_interactive, ge=0, description="longest wait of an interactive request"
    )
    flow_max_wait_standard: float = Field(
        _F.max_wait_standard, ge=0, description="longest wait of a standard request"
    )
    flow_max_wait_batch: float = Field(
        _F.max_wait_batch, ge=0, description="longest wait of a batch request"
    )
    flow_retry_after: int = Field(
        _F.retry_after_seconds, ge=1, description="Retry-After seconds of a capacity_shed 503"
    )
    prometheus_interval: float = Field(_R.prometheus_interval, gt=0)
    probe_interval: float = Field(
        _R.probe_interval, ge=0, description="seconds between RTT probes of a region; 0: off"
    )
    stale_after: float = Field(_S.snapshot_stale_seconds, gt=0)
    cost_weight_ms: float = Field(_S.cost_weight_ms, ge=0)
    log_level: str = "INFO"
    event_loop: Literal["asyncio", "uvloop", "auto"] = Field(
        "auto", description="auto: uvloop when installed (it is a dependency)"
    )
    access_log: bool = Field(True, description="one JSON line per request on stderr")
    quota_redis_url: str | None = Field(
        None,
        description="Redis shared by the router replicas for the tenants' quotas "
        "(requests/tokens per minute, tokens per day); without it each replica keeps its "
        "own share",
    )
    quota_replicas: int = Field(
        _Q.replicas,
        ge=1,
        description="router replicas sharing the quotas: each keeps limit / replicas while "
        "Redis is unreachable (or not configured)",
    )
    quota_redis_timeout: float = Field(
        _Q.redis_timeout, gt=0, description="seconds per Redis call; beyond: per-replica limits"
    )
    quota_default_max_tokens: int = Field(
        _Q.default_max_tokens,
        ge=1,
        le=1 << 24,
        description="for a tenant with a tokens quota, a chat completion setting neither "
        "max_completion_tokens nor max_tokens: reserved, and sent to the engine as its "
        "max_tokens (the engine cannot generate more than was reserved)",
    )
    endpoint_key_file: Path | None = Field(
        None,
        description="key presented to regions reached through spec.endpoint (their router); "
        "reloaded when it changes",
    )

    @field_validator("listen", "admin_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError("must be host:port")
        return v

    @model_validator(mode="after")
    def _two_ports(self) -> Settings:
        if self.listen == self.admin_listen and not self.listen.endswith(":0"):
            raise ValueError("--admin-listen must differ from --listen")
        return self

    @model_validator(mode="after")
    def _one_source(self) -> Settings:
        sources = [self.backends is not None, self.kubeconfig is not None, self.in_cluster]
        if sum(sources) != 1:
            raise ValueError("give exactly one of --backends, --kubeconfig, --in-cluster")
        return self

    def router_config(self) -> RouterConfig:
        return RouterConfig(
            timeouts=Timeouts(
                connect=self.connect_timeout,
                first_byte=self.first_byte_timeout,
                idle=self.idle_timeout,
                grace_period=self.grace_period,
                client_idle=self.client_idle_timeout,
                client_request=self.client_request_timeout,
            ),
            limits=Limits(
                max_connections=self.max_connections,
                max_connections_per_host=self.max_connections_per_host,
                max_body_bytes=self.max_body_bytes,
                max_head_bytes=self.max_head_bytes,
                max_client_connections=self.max_client_connections,
                max_attempts=self.max_attempts,
                tenant_max_concurrent_requests=self.tenant_max_concurrent_requests,
            ),
            retry_budget=RetryBudgetConfig(),
            ejection=EjectionConfig(),
            scoring=ScoringConfig(
                cost_weight_ms=self.cost_weight_ms, snapshot_stale_seconds=self.stale_after
            ),
            hold=HoldConfig(
                max_requests=self.hold_max_requests,
                timeout_seconds=self.hold_timeout,
                retry_after_seconds=self.hold_retry_after,
            ),
            flow=FlowConfig(
                enabled=self.flow_control,
                max_queued=self.flow_max_queued,
                max_wait_interactive=self.flow_max_wait_interactive,
                max_wait_standard=self.flow_max_wait_standard,
                max_wait_batch=self.flow_max_wait_batch,
                retry_after_seconds=self.flow_retry_after,
            ),
            prometheus_interval=self.prometheus_interval,
            probe_interval=self.probe_interval,
        )

    def quota_config(self) -> QuotaConfig:
        return QuotaConfig(
            redis_url=self.quota_redis_url,
            replicas=self.quota_replicas,
            redis_timeout=self.quota_redis_timeout,
            default_max_tokens=self.quota_default_max_tokens,
        )


def build(settings: Settings) -> RouterServer:
    """Load and check everything; PolicyError when the router must not start."""
    try:
        tenants = load_tenants_text(settings.tenants.read_text())
    except OSError as exc:
        raise PolicyError(f"cannot read tenants file: {exc}") from exc
    rtt = None
    if settings.rtt is not None:
        try:
            rtt = RttMatrix.from_nested(yaml.safe_load(settings.rtt.read_text()) or {})
        except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as exc:
            raise PolicyError(f"invalid RTT file: {exc}") from exc
    fleet: Fleet | None = None
    extra: list[Any] = []
    if settings.backends is not None:
        fleet = load_fleet_file(settings.backends)
    state = RouterState.create(
        region=settings.region,
        tenants=tenants,
        fleet=fleet,
        config=settings.router_config(),
        policy=PolicyName(settings.policy),
        prometheus_url=settings.prometheus_url,
        access_log=AccessLog(enabled=settings.access_log),
        rtt=rtt,  # kept on every backends reload
        quota=settings.quota_config(),
    )
    if settings.endpoint_key_file is not None:
        state.endpoint_key = load_endpoint_key(settings.endpoint_key_file)
    if settings.backends is None:
        extra.append(_kube_task(settings, rtt))
    app = create_app(
        state,
        tenants_file=settings.tenants,
        backends_file=settings.backends,
        extra_tasks=extra,
        endpoint_key_file=settings.endpoint_key_file,
    )
    host, port = _host_port(settings.listen)
    admin_host, admin_port = _host_port(settings.admin_listen)
    return RouterServer(app, host, port, admin_host, admin_port)


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _kube_task(settings: Settings, rtt: RttMatrix | None) -> Any:
    def start(state: RouterState) -> Coroutine[Any, Any, None]:
        # Imported here: the Kubernetes client costs ~0.5 s of start-up, and only this
        # discovery mode needs it.
        from factory_router.discovery.kube_watch import KubeWatcher  # noqa: PLC0415

        watcher = KubeWatcher(
            state.set_fleet,
            kubeconfig=str(settings.kubeconfig) if settings.kubeconfig else None,
            rtt=rtt,
            local_region=settings.region,
        )
        return watcher.run()

    return start


async def serve(server: RouterServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # What start-up built lives as long as the process: out of the collector's sight, a
    # full collection no longer walks it (tens of ms on a request's path, now and then).
    gc.collect()
    gc.freeze()
    await stop.wait()
    log.info("shutting down: draining in-flight requests")
    await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    settings = CliApp.run(Settings, cli_args=list(argv) if argv is not None else sys.argv[1:])
    setup_logging(settings.log_level)
    try:
        server = build(settings)
    except PolicyError as exc:
        log.error("refusing to start: %s", exc)
        raise SystemExit(2) from exc
    with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
        runner.run(serve(server))


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for or available (it cut the router's CPU per request in
    bench/router_overhead); the standard loop otherwise."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--event-loop uvloop: uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


if __name__ == "__main__":
    main()
