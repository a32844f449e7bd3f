"""The first byte is late by the round trip from the caller's region."""

from __future__ import annotations

import time

import aiohttp

from factory_sim.server import EngineConfig, SimHost

RTT_MS = 400.0


async def _elapsed(http: aiohttp.ClientSession, url: str, region: str | None) -> float:
    headers = {"x-factory-router-region": region} if region else {}
    body = {"model": "m", "prompt": "hi", "max_tokens": 1}
    start = time.monotonic()
    async with http.post(f"{url}/v1/completions", json=body, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["x-factory-sim-region"] == "eu-west-1"
        await resp.read()
    return time.monotonic() - start


async def test_rtt_from_header(host: SimHost, http: aiohttp.ClientSession) -> None:
    handle = await host.add(
        EngineConfig(
            model_name="m", region="eu-west-1", rtt_ms={"us-east-1": RTT_MS, "eu-west-1": 2.0}
        )
    )
    far = await _elapsed(http, handle.url, "us-east-1")
    none = await _elapsed(http, handle.url, None)
    unknown = await _elapsed(http, handle.url, "mars-1")
    assert far >= RTT_MS / 1000 * 0.95
    assert none < far - 0.25
    assert unknown < far - 0.25
