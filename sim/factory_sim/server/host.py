"""SimHost: many simulated engines in one process, each on its own loopback port.

    async with SimHost() as host:
        handle = await host.add(EngineConfig(model_name="llama", profile="h100"))
        ...  # handle.url, handle.port, handle.faults
        await host.remove(handle)

Leaving the ``async with`` stops every engine still running. The last ``RETIRED_KEPT``
engines removed stay listed in ``retired`` with their final request counts, so that what an
engine served is still known after a rollout replaced it.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web

from factory_sim.engine import EngineConfig, SimEngine
from factory_sim.server.faults import Faults
from factory_sim.server.openai_app import build_app

# Seconds a removed engine's server waits for in-flight handlers; the engine is stopped
# first, which ends its streams, so this is only a bound.
SHUTDOWN_TIMEOUT_S = 2.0
RETIRED_KEPT = 1000


@dataclass
class EngineHandle:
    """A running simulated engine."""

    id: str
    config: EngineConfig
    engine: SimEngine
    faults: Faults
    port: int
    _runner: web.AppRunner

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "port": self.port,
            "url": self.url,
            "model_name": self.config.served_model_names,
            "profile": self.config.profile,
            "region": self.config.region,
            "labels": self.config.labels,
            "behaviour": self.config.behaviour.model_dump(),
            "requests": self.engine.metrics.totals(),
        }


class SimHost:
    """Owns simulated engines; an async context manager."""

    def __init__(self) -> None:
        self._engines: dict[str, EngineHandle] = {}
        self._numbers = itertools.count(1)
        self._retired: deque[dict[str, object]] = deque(maxlen=RETIRED_KEPT)

    @property
    def engines(self) -> dict[str, EngineHandle]:
        return dict(self._engines)

    @property
    def retired(self) -> list[dict[str, object]]:
        """What removed engines were (``describe()``, as they were removed), oldest first."""
        return list(self._retired)

    async def __aenter__(self) -> SimHost:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def add(self, config: EngineConfig) -> EngineHandle:
        engine_id = config.name or f"engine-{next(self._numbers)}"
        if engine_id in self._engines:
            raise ValueError(f"an engine named {engine_id!r} already runs")
        engine = SimEngine(config)
        faults = Faults()
        runner = web.AppRunner(
            build_app(engine, faults, engine_id),
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.host, config.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        port = int(runner.addresses[0][1])
        engine.start()
        handle = EngineHandle(engine_id, config, engine, faults, port, runner)
        self._engines[engine_id] = handle
        return handle

    async def remove(self, handle_or_id: EngineHandle | str) -> None:
        engine_id = handle_or_id if isinstance(handle_or_id, str) else handle_or_id.id
        handle = self._engines.pop(engine_id, None)
        if handle is None:
            raise KeyError(engine_id)
        handle.faults.clear()  # release stalled requests
        await handle.engine.stop()  # ends every stream with finish_reason "abort"
        await handle._runner.cleanup()
        self._retired.append(handle.describe())

    async def close(self) -> None:
        for engine_id in list(self._engines):
            await self.remove(engine_id)
