"""Fixtures for the simulator's unit tests: a SimHost per test, HTTP helpers, wait_until."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from factory_sim.server import EngineConfig, EngineHandle, SimHost
from tests.support.waiting import async_wait_until

# Tests shrink time so a "second" of simulated H100 work takes a fraction of that.
FAST = 0.2


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """The shared `async_wait_until`, with the short interval these in-process tests use."""
    await async_wait_until(predicate, timeout, interval=interval)


@pytest.fixture
async def host() -> AsyncIterator[SimHost]:
    async with SimHost() as sim_host:
        yield sim_host


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


@pytest.fixture
async def engine(host: SimHost) -> EngineHandle:
    return await host.add(EngineConfig(model_name=["llama-8b", "alias"], time_scale=FAST))


async def scrape(http: aiohttp.ClientSession, handle: EngineHandle) -> dict[str, Any]:
    """``{sample name + sorted labels: value}`` plus ``{"__families__": {name: family}}``."""
    async with http.get(f"{handle.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples: dict[str, Any] = {"__families__": families}
    for family in families.values():
        for s in family.samples:
            key = s.name + str(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if "le" not in s.labels:
                samples[key] = s.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in samples["__families__"].values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
