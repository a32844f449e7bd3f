"""The aiohttp application and its lifecycle: background tasks and graceful shutdown.

The server is aiohttp's and the upstream client is the router's own HTTP/1.1 client
(`upstream.http1`), both chosen by measurement (bench/router_overhead/stack_compare.py):
on this class of machine httpx's client cost several times aiohttp's CPU per request and
aiohttp's client about twice `upstream.http1`'s; uvicorn was no faster than aiohttp's
own server.

Shutdown: stop listening, report unready, let in-flight requests (streams included)
finish within the grace period, then close what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from factory_router.app import endpoints, proxy
from factory_router.app.probes import run_probes
from factory_router.app.reload import FileWatcher
from factory_router.app.state import STATE_KEY, RouterState
from factory_router.discovery.static import load_fleet_file
from factory_router.policy.tenants import TenantTable, load_endpoint_key, load_tenants_text
from factory_router.signals.prometheus import PrometheusPoller, Snapshot

log = logging.getLogger("factory_router.server")

OPENAI_POST_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def create_app(
    state: RouterState,
    tenants_file: Path | None = None,
    backends_file: Path | None = None,
    extra_tasks: list[Callable[[RouterState], Coroutine[Any, Any, None]]] | None = None,
    endpoint_key_file: Path | None = None,
) -> web.Application:
    # Bodies are read by the proxy with its own limit (413); aiohttp's must not be lower.
    app = web.Application(client_max_size=state.config.limits.max_body_bytes + 1)
    app[STATE_KEY] = state
    for path in OPENAI_POST_PATHS:
        app.router.add_post(path, proxy.handle)
    app.router.add_get("/v1/models", endpoints.models)
    app.router.add_get("/healthz", endpoints.healthz)
    # vLLM's liveness path too: a router that is a region's `spec.endpoint` is probed for
    # RTT by the routers in front of it the way an engine is.
    app.router.add_get("/health", endpoints.healthz)
    app.router.add_get("/readyz", endpoints.readyz)
    app.router.add_get("/metrics", endpoints.metrics)
    app.router.add_get("/admin/explain", endpoints.explain)
    app.router.add_route("*", "/{tail:.*}", endpoints.not_found)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(
        _tasks_ctx(tenants_file, backends_file, extra_tasks or [], endpoint_key_file)
    )
    return app


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    await state.upstream.start()
    yield
    await state.upstream.close()


def _tasks_ctx(
    tenants_file: Path | None,
    backends_file: Path | None,
    extra: list[Callable[[RouterState], Coroutine[Any, Any, None]]],
    endpoint_key_file: Path | None,
) -> Callable[[web.Application], Any]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE_KEY]
        tasks: list[asyncio.Task[None]] = []
        interval = state.config.reload_interval
        if tenants_file is not None:
            tasks.append(asyncio.create_task(_tenants_watcher(state, tenants_file).run(interval)))
        if backends_file is not None:
            tasks.append(asyncio.create_task(_fleet_watcher(state, backends_file).run(interval)))
        if endpoint_key_file is not None:
            watcher = _endpoint_key_watcher(state, endpoint_key_file)
            tasks.append(asyncio.create_task(watcher.run(interval)))
        if state.prometheus_url:
            tasks.append(asyncio.create_task(_poller(state).run()))
        if state.config.probe_interval > 0:
            tasks.append(asyncio.create_task(run_probes(state)))
        tasks.extend(asyncio.create_task(make(state)) for make in extra)
        tasks.append(asyncio.create_task(_flush_access_log(state)))
        yield
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        state.access_log.flush()

    return ctx


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

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def state(self) -> RouterState:
        return self.app[STATE_KEY]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        grace = self.state.config.timeouts.grace_period
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=grace
        )
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await self._site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        log.info("router listening on %s", self.url)

    async def stop(self) -> None:
        """Graceful: stop accepting, wait for in-flight requests up to the grace period."""
        if self._runner is None:
            return
        state = self.state
        state.draining = True
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if state.inflight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.idle.wait(), state.config.timeouts.grace_period)
        if state.inflight:
            log.warning("grace period over with %d requests in flight", state.inflight)
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> RouterServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
