"""The router application and its lifecycle: routes, background tasks, graceful shutdown.

The server is the router's own HTTP/1.1 server (`http_server`), chosen by measurement
(bench/router_overhead/stack_compare.py: at 100 req/s aiohttp's server and uvicorn with a
bare ASGI app added about 0.2 ms more p50 than a server on asyncio protocols). The
upstream client is aiohttp's (`upstream.client`), maintained and fuzzed by others, with
`upstream.reuse_guard` closing the gaps in its connection reuse that an adversarial
upstream could use to hand one tenant another's bytes.

Two listeners: the tenant-facing one (`ROUTES`: the OpenAI API, a bare health and
readiness check) and the admin one (`ADMIN_ROUTES`: readiness details, metrics, explain),
on its own address (`--admin-listen`, loopback by default) so that what describes the
configuration and the load is never reachable where tenants connect.

Shutdown: stop listening, report unready, let in-flight requests (streams included)
finish within the grace period, then close what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from factory_router.app import endpoints, proxy
from factory_router.app.http import request_id
from factory_router.app.http_message import Request
from factory_router.app.http_server import HeadCheck, HttpServer, ServerLimits
from factory_router.app.probes import run_probes
from factory_router.app.reload import FileWatcher
from factory_router.app.state import RouterState
from factory_router.discovery.static import load_fleet_file
from factory_router.policy.errors import RouterError, Unauthenticated
from factory_router.policy.tenants import TenantTable, load_endpoint_key, load_tenants_text
from factory_router.signals.prometheus import PrometheusPoller, Snapshot

log = logging.getLogger("factory_router.server")

OPENAI_POST_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


Endpoint = Callable[[RouterState, Request], Awaitable[None]]
ExtraTask = Callable[[RouterState], Coroutine[Any, Any, None]]

ROUTES: dict[tuple[str, str], Endpoint] = {
    **{("POST", path): proxy.handle for path in OPENAI_POST_PATHS},
    ("GET", "/v1/models"): endpoints.models,
    ("GET", "/healthz"): endpoints.healthz,
    # vLLM's liveness path too: a router that is a region's `spec.endpoint` is probed for
    # RTT by the routers in front of it the way an engine is.
    ("GET", "/health"): endpoints.healthz,
    ("GET", "/readyz"): endpoints.readyz,
}

ADMIN_ROUTES: dict[tuple[str, str], Endpoint] = {
    ("GET", "/healthz"): endpoints.healthz,
    ("GET", "/readyz"): endpoints.readyz_details,
    ("GET", "/metrics"): endpoints.metrics,
    ("GET", "/admin/explain"): endpoints.explain,
}


class RouterApp:
    """One router's routes and background work (reloads, probes, load polling)."""

    def __init__(
        self,
        state: RouterState,
        tenants_file: Path | None = None,
        backends_file: Path | None = None,
        extra_tasks: list[ExtraTask] | None = None,
        endpoint_key_file: Path | None = None,
    ) -> None:
        self.state = state
        self._tenants_file = tenants_file
        self._backends_file = backends_file
        self._extra = extra_tasks or []
        self._endpoint_key_file = endpoint_key_file
        self._tasks: list[asyncio.Task[None]] = []

    async def handle(self, request: Request) -> None:
        method = "GET" if request.method == "HEAD" else request.method
        endpoint = ROUTES.get((method, request.path), endpoints.not_found)
        await endpoint(self.state, request)

    async def handle_admin(self, request: Request) -> None:
        method = "GET" if request.method == "HEAD" else request.method
        endpoint = ADMIN_ROUTES.get((method, request.path), endpoints.not_found)
        await endpoint(self.state, request)

    async def startup(self) -> None:
        state = self.state
        await state.upstream.start()
        interval = state.config.reload_interval
        watchers: list[Coroutine[Any, Any, None]] = []
        if self._tenants_file is not None:
            watchers.append(_tenants_watcher(state, self._tenants_file).run(interval))
        if self._backends_file is not None:
            watchers.append(_fleet_watcher(state, self._backends_file).run(interval))
        if self._endpoint_key_file is not None:
            watchers.append(_endpoint_key_watcher(state, self._endpoint_key_file).run(interval))
        if state.prometheus_url:
            watchers.append(_poller(state).run())
        if state.config.probe_interval > 0:
            watchers.append(run_probes(state))
        watchers.append(state.quota.run())  # back to shared quotas when Redis answers
        watchers.extend(make(state) for make in self._extra)
        watchers.append(_flush_access_log(state))
        self._tasks = [asyncio.create_task(w) for w in watchers]

    async def cleanup(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.state.access_log.flush()
        await self.state.upstream.close()
        await self.state.quota.close()
        if self.state.flow is not None:
            await self.state.flow.close()


def create_app(
    state: RouterState,
    tenants_file: Path | None = None,
    backends_file: Path | None = None,
    extra_tasks: list[ExtraTask] | None = None,
    endpoint_key_file: Path | None = None,
) -> RouterApp:
    return RouterApp(state, tenants_file, backends_file, extra_tasks, endpoint_key_file)


async def _flush_access_log(state: RouterState, interval: float = 0.5) -> None:
    while True:
        await asyncio.sleep(interval)
        state.access_log.flush()


def _tenants_watcher(state: RouterState, path: Path) -> FileWatcher[TenantTable]:
    def apply(table: TenantTable) -> None:
        state.tenants = table

    return FileWatcher(
        "tenants",
        path,
        lambda p: load_tenants_text(p.read_text()),
        apply,
        lambda _: state.metrics.reload_errors.labels("tenants").inc(),
    )


def _endpoint_key_watcher(state: RouterState, path: Path) -> FileWatcher[str]:
    def apply(key: str) -> None:
        state.endpoint_key = key

    return FileWatcher(
        "endpoint key",
        path,
        load_endpoint_key,
        apply,
        lambda _: state.metrics.reload_errors.labels("endpoint_key").inc(),
    )


def _fleet_watcher(state: RouterState, path: Path) -> FileWatcher[Any]:
    def failed(msg: str) -> None:
        state.metrics.reload_errors.labels("backends").inc()
        state.fleet_error = msg[:300]

    return FileWatcher("backends", path, load_fleet_file, state.set_fleet, failed)


def _poller(state: RouterState) -> PrometheusPoller:
    url = state.prometheus_url or ""

    def installed(snapshot: Snapshot) -> None:
        state.load.install(snapshot)
        state.prometheus_error = None

    def failed(error: str) -> None:
        state.prometheus_error = error

    return PrometheusPoller(
        url,
        state.config.prometheus_interval,
        state.config.timeouts.prometheus_query,
        installed,
        failed,
    )


def _tenant_key_check(state: RouterState) -> HeadCheck:
    """A POST to the API without a valid key is refused on its head (401, as the proxy
    would): no 100 Continue, no body buffered for whoever holds no key."""

    def check(request: Request) -> RouterError | None:
        if request.method != "POST" or request.path not in OPENAI_POST_PATHS:
            return None
        table = state.tenants
        try:
            tenant = table.authenticate(request.headers.get("authorization"))
        except Unauthenticated as err:
            state.metrics.observe_request("none", "unknown", err.status, 0.0)
            state.access_log.write(
                {"request_id": request_id(request), "tenant": None, "path": request.path,
                 "reason": err.code, "status": err.status, "attempts": 0}
            )  # fmt: skip
            return err
        request.authenticated = (table, tenant)  # the proxy does not hash the key again
        return None

    return check


class RouterServer:
    """Runs one router on host:port and its admin listener on admin_host:admin_port (port
    0 picks a free one); an async context manager."""

    def __init__(
        self,
        app: RouterApp,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_host: str = "127.0.0.1",
        admin_port: int = 0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.admin_host = admin_host
        self.admin_port = admin_port
        self._http: HttpServer | None = None
        self._admin: HttpServer | None = None

    @property
    def state(self) -> RouterState:
        return self.app.state

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_host}:{self.admin_port}"

    async def start(self) -> None:
        config = self.state.config
        limits = ServerLimits(
            max_head_bytes=config.limits.max_head_bytes,
            max_body_bytes=config.limits.max_body_bytes,
            client_idle=config.timeouts.client_idle,
            client_request=config.timeouts.client_request,
            max_connections=config.limits.max_client_connections,
        )
        await self.app.startup()
        http = HttpServer(self.app.handle, limits, check_head=_tenant_key_check(self.state))
        try:
            self.port = await http.start(self.host, self.port)
        except BaseException:
            await self.app.cleanup()
            raise
        self._http = http
        admin = HttpServer(self.app.handle_admin, limits)
        try:
            self.admin_port = await admin.start(self.admin_host, self.admin_port)
        except BaseException:
            await self.stop()
            raise
        self._admin = admin
        log.info("router listening on %s, admin on %s", self.url, self.admin_url)

    async def stop(self) -> None:
        """Graceful: stop accepting, wait for in-flight requests up to the grace period."""
        http, self._http = self._http, None
        if http is None:
            return
        state = self.state
        state.draining = True
        await http.shutdown(state.config.timeouts.grace_period)
        if state.inflight:
            log.warning("grace period over with %d requests in flight", state.inflight)
        # The admin listener stays up through the drain: metrics and readiness details
        # show it. Its answers are short; nothing there needs a grace period.
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.shutdown(0)
        await self.app.cleanup()

    async def __aenter__(self) -> RouterServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
