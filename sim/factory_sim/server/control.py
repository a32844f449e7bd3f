"""HTTP control API so another process can manage a SimHost's engines.

    POST   /engines               body: EngineConfig JSON   -> 201 {"id", "port", "url"}
    GET    /engines                                         -> {"engines", "retired"}
    DELETE /engines/{id}                                    -> 200 {"id"} | 404
    PUT    /engines/{id}/faults   body: FaultSpec JSON      -> 200 FaultSpec (POST too)
    DELETE /engines/{id}/faults                             -> 200 FaultSpec (cleared)
    GET    /healthz                                         -> 200 "ok"

Each engine is described with its config, behaviour and request counts; "retired" lists the
engines removed lately, with their counts when they stopped. Errors use the same
``{"error": {...}}`` shape as the engines.
"""

from __future__ import annotations

import json

from aiohttp import web
from pydantic import ValidationError

from factory_sim.engine import EngineConfig
from factory_sim.server import errors
from factory_sim.server.faults import FaultSpec
from factory_sim.server.host import SimHost

HOST_KEY = web.AppKey("host", SimHost)


def build_control_app(host: SimHost) -> web.Application:
    app = web.Application()
    app[HOST_KEY] = host
    app.router.add_post("/engines", _add)
    app.router.add_get("/engines", _list)
    app.router.add_delete("/engines/{id}", _remove)
    app.router.add_put("/engines/{id}/faults", _set_faults)
    app.router.add_post("/engines/{id}/faults", _set_faults)
    app.router.add_delete("/engines/{id}/faults", _clear_faults)
    app.router.add_get("/healthz", _healthz)
    return app


async def _body(request: web.Request) -> object:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc


async def _add(request: web.Request) -> web.Response:
    try:
        config = EngineConfig.model_validate(await _body(request))
    except ValidationError as exc:
        return errors.from_validation_error(exc)
    except web.HTTPBadRequest as exc:
        return errors.bad_request(f"JSON decode error: {exc.text}")
    try:
        handle = await request.app[HOST_KEY].add(config)
    except ValueError as exc:
        return errors.error_response(409, str(exc), "name")
    except OSError as exc:
        return errors.error_response(409, f"cannot listen: {exc}", "port")
    return web.json_response({"id": handle.id, "port": handle.port, "url": handle.url}, status=201)


async def _list(request: web.Request) -> web.Response:
    host = request.app[HOST_KEY]
    engines = [h.describe() for h in host.engines.values()]
    return web.json_response({"engines": engines, "retired": host.retired})


async def _remove(request: web.Request) -> web.Response:
    engine_id = request.match_info["id"]
    try:
        await request.app[HOST_KEY].remove(engine_id)
    except KeyError:
        return errors.error_response(404, f"no engine {engine_id!r}", "id")
    return web.json_response({"id": engine_id})


async def _set_faults(request: web.Request) -> web.Response:
    handle = request.app[HOST_KEY].engines.get(request.match_info["id"])
    if handle is None:
        return errors.error_response(404, f"no engine {request.match_info['id']!r}", "id")
    try:
        spec = FaultSpec.model_validate(await _body(request))
    except ValidationError as exc:
        return errors.from_validation_error(exc)
    except web.HTTPBadRequest as exc:
        return errors.bad_request(f"JSON decode error: {exc.text}")
    handle.faults.set(spec)
    return web.json_response(spec.model_dump())


async def _clear_faults(request: web.Request) -> web.Response:
    handle = request.app[HOST_KEY].engines.get(request.match_info["id"])
    if handle is None:
        return errors.error_response(404, f"no engine {request.match_info['id']!r}", "id")
    handle.faults.clear()
    return web.json_response(handle.faults.spec.model_dump())


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


class ControlServer:
    """Runs the control API on a loopback port; ``await start()``, ``await stop()``."""

    def __init__(self, host: SimHost, bind: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(build_control_app(host), access_log=None, shutdown_timeout=2.0)
        self._bind, self._port = bind, port
        self.port = 0

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._bind, self._port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()
