"""Requests sharing a prefix hit the prefix cache, and their TTFT drops."""

from __future__ import annotations

import time

import aiohttp

from factory_sim.server import EngineConfig, EngineHandle, SimHost

from .conftest import scrape, value

SHARED = "You are a careful assistant for the Inference Factory fleet. " * 40  # ~600 tokens


async def _ttft(http: aiohttp.ClientSession, handle: EngineHandle, question: str) -> float:
    body = {
        "model": "m",
        "stream": True,
        "max_tokens": 2,
        "ignore_eos": True,
        "messages": [{"role": "system", "content": SHARED}, {"role": "user", "content": question}],
    }
    start = time.monotonic()
    async with http.post(f"{handle.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        await resp.content.readline()
        first = time.monotonic() - start
        await resp.read()
    return first


async def test_shared_prefix_hits_cache_and_cuts_ttft(
    host: SimHost, http: aiohttp.ClientSession
) -> None:
    # L4 in real time: a 600-token prefill is ~0.24 s, a cached one ~0.07 s.
    handle = await host.add(EngineConfig(model_name="m", profile="l4"))
    cold = await _ttft(http, handle, "first question?")
    after_cold = await scrape(http, handle)
    warm = [await _ttft(http, handle, f"question number {i}?") for i in range(3)]
    after_warm = await scrape(http, handle)

    hits_cold = value(after_cold, "vllm:prefix_cache_hits_total")
    hits_warm = value(after_warm, "vllm:prefix_cache_hits_total")
    queries = value(after_warm, "vllm:prefix_cache_queries_total")
    assert hits_cold == 0
    assert hits_warm - hits_cold >= 3 * 550  # ~all of the shared ~600 tokens, three times
    assert queries >= hits_warm
    assert max(warm) < cold * 0.7


async def test_no_hits_when_prefix_caching_is_off(
    host: SimHost, http: aiohttp.ClientSession
) -> None:
    handle = await host.add(
        EngineConfig(model_name="m", enable_prefix_caching=False, time_scale=0.1)
    )
    for i in range(2):
        await _ttft(http, handle, f"q{i}")
    assert value(await scrape(http, handle), "vllm:prefix_cache_hits_total") == 0
