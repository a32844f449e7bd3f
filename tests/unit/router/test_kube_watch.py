"""KubeWatcher against a fake Kubernetes API server on 127.0.0.1 (list + watch over HTTP,
newline-delimited JSON events), with the official client: discovery keeps the router's
fleet current, honours terminating endpoints and fails closed when a region goes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from factory_router.app.state import RouterState
from factory_router.discovery.kube_watch import KubeWatcher
from tests.unit.router.router_testkit import auth, engines, router, wait_until

PATHS = {
    "/apis/inference.factory.dev/v1alpha1/fleetregions": "regions",
    "/apis/inference.factory.dev/v1alpha1/inferencefactories": "factories",
    "/apis/discovery.k8s.io/v1/endpointslices": "slices",
    "/api/v1/pods": "pods",
}


class FakeApiServer:
    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.objects = objects
        self.watchers: dict[str, list[asyncio.Queue[dict[str, Any] | None]]] = {
            k: [] for k in PATHS.values()
        }
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = PATHS.get(request.path)
        if kind is None:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        if request.query.get("watch") not in ("true", "True", "1"):
            return web.json_response(
                {
                    "kind": "List",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "1"},
                    "items": self.objects[kind],
                }
            )
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.watchers[kind].append(queue)
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        await resp.prepare(request)
        try:
            while (event := await queue.get()) is not None:
                await resp.write(json.dumps(event).encode() + b"\n")
        finally:
            self.watchers[kind].remove(queue)
        return resp

    async def emit(self, kind: str, event_type: str, obj: dict[str, Any]) -> None:
        await wait_until(lambda: bool(self.watchers[kind]), timeout=5, what=f"{kind} watch")
        for q in self.watchers[kind]:
            q.put_nowait({"type": event_type, "object": obj})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        for queues in self.watchers.values():
            for q in queues:
                q.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()


def region(name: str, jurisdiction: str) -> dict[str, Any]:
    return {
        "apiVersion": "inference.factory.dev/v1alpha1",
        "kind": "FleetRegion",
        "metadata": {"name": name},
        "spec": {"jurisdiction": jurisdiction},
    }


def eslice(endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": "IPv4",
        "metadata": {
            "name": "llama-eu-x",
            "namespace": "ml",
            "labels": {"kubernetes.io/service-name": "llama-eu"},
        },
        "ports": [{"name": "http", "port": 8000}],
        "endpoints": endpoints,
    }


def endpoint(ip: str, pod: str, *, ready: bool = True, terminating: bool = False) -> dict[str, Any]:
    return {
        "addresses": [ip],
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "ml"},
        "conditions": {"ready": ready, "serving": True, "terminating": terminating},
    }


def pod(name: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "annotations": {"inference.factory.dev/address": address},
        },
    }


@contextlib.asynccontextmanager
async def fake_api(objects: dict[str, list[dict[str, Any]]]) -> AsyncIterator[FakeApiServer]:
    api = FakeApiServer(objects)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def test_watch_keeps_the_fleet_current(tmp_path: Path) -> None:
    async with engines(2) as (e0, e1):
        addr0, addr1 = e0.url.removeprefix("http://"), e1.url.removeprefix("http://")
        factory = {
            "apiVersion": "inference.factory.dev/v1alpha1",
            "kind": "InferenceFactory",
            "metadata": {"name": "llama", "namespace": "ml"},
            "spec": {"model": {"name": "m"}, "pools": [{"name": "eu", "region": "eu-west-1"}]},
            "status": {"pools": [{"name": "eu", "region": "eu-west-1", "jurisdiction": "EU"}]},
        }
        objects = {
            "regions": [region("eu-west-1", "EU")],
            "factories": [factory],
            "slices": [eslice([endpoint("10.0.0.1", "p0")])],
            "pods": [pod("p0", addr0), pod("p1", addr1)],
        }
        async with fake_api(objects) as api:
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(
                json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "current-context": "t",
                        "clusters": [{"name": "t", "cluster": {"server": api.url}}],
                        "users": [{"name": "t", "user": {"token": "x"}}],
                        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
                    }
                )
            )

            def start(state: RouterState) -> Any:
                return KubeWatcher(
                    state.set_fleet, kubeconfig=str(kubeconfig), local_region="eu-west-1"
                ).run()

            async with router([], extra_tasks=[start]) as r, httpx.AsyncClient(base_url=r.url) as c:
                await wait_until(
                    lambda: len(r.state.fleet.backends) == 1, timeout=10, what="initial list"
                )
                body = {"model": "m", "messages": []}
                assert (
                    await c.post("/v1/chat/completions", json=body, headers=auth("eu"))
                ).status_code == 200
                assert e0.total == 1
                # Rollout: p0 terminates, p1 is ready: new requests go to p1 only.
                await api.emit(
                    "slices",
                    "MODIFIED",
                    eslice(
                        [
                            endpoint("10.0.0.1", "p0", ready=False, terminating=True),
                            endpoint("10.0.0.2", "p1"),
                        ]
                    ),
                )
                await wait_until(lambda: len(r.state.fleet.backends) == 2, timeout=10)
                for _ in range(3):
                    assert (
                        await c.post("/v1/chat/completions", json=body, headers=auth("eu"))
                    ).status_code == 200
                assert (e0.total, e1.total) == (1, 3)
                # The FleetRegion is deleted: the model is no longer routable (fail closed).
                await api.emit("regions", "DELETED", region("eu-west-1", "EU"))
                await wait_until(lambda: not r.state.fleet.regions, timeout=10)
                gone = await c.post("/v1/chat/completions", json=body, headers=auth("eu"))
                assert gone.status_code == 404
                assert (e0.total, e1.total) == (1, 3)
