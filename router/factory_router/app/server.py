"""The router application and its lifecycle: routes, background tasks, graceful shutdown.

The server is the router's own HTTP/1.1 server (`http_server`) and the upstream client is
its own HTTP/1.1 client (`upstream.http1`), both chosen by measurement
(bench/router_overhead/stack_compare.py, closed-loop and at a fixed rate): httpx's client
cost several times aiohttp's CPU per request, and aiohttp's client about twice
`upstream.http1`'s; at 100 req/s aiohttp's server and uvicorn (a bare ASGI app) added
about 0.2 ms more p50 than a server on asyncio protocols.

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
from factory_router.app.http_message import Request
from factory_router.app.http_server import HttpServer, ServerLimits
from factory_router.app.probes import run_probes
from factory_router.app.reload import FileWatcher
from factory_router.app.state import RouterState
from factory_router.discovery.static import load_fleet_file
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


class RouterServer:
    """Runs one router on host:port (port 0 picks a free one); an async context manager."""

    def __init__(self, app: RouterApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._http: HttpServer | None = None

    @property
    def state(self) -> RouterState:
        return self.app.state

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        config = self.state.config
        limits = ServerLimits(
            max_head_bytes=config.limits.max_head_bytes,
            max_body_bytes=config.limits.max_body_bytes,
            client_idle=config.timeouts.client_idle,
            client_request=config.timeouts.client_request,
        )
        await self.app.startup()
        http = HttpServer(self.app.handle, limits)
        try:
            self.port = await http.start(self.host, self.port)
        except BaseException:
            await self.app.cleanup()
            raise
        self._http = http
        log.info("router listening on %s", self.url)

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
        await self.app.cleanup()

    async def __aenter__(self) -> RouterServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
