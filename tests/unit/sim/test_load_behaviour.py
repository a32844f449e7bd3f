"""Above capacity, queues and TTFT rise and the KV cache fills; below capacity they do not."""

from __future__ import annotations

import asyncio

import aiohttp

from factory_sim.server import EngineConfig, EngineHandle, SimHost

from .conftest import scrape, value

PROMPT = "word " * 160  # 800 characters = 200 tokens


def _small_engine() -> EngineConfig:
    # 768 KV tokens = 48 blocks: three 240-token requests fill it.
    return EngineConfig(
        model_name="m",
        profile="l4",
        max_num_seqs=8,
        kv_cache_tokens=768,
        enable_prefix_caching=False,
        time_scale=0.1,
    )


async def _complete(http: aiohttp.ClientSession, handle: EngineHandle, i: int) -> None:
    body = {"model": "m", "prompt": f"{i} {PROMPT}", "max_tokens": 40, "ignore_eos": True}
    async with http.post(f"{handle.url}/v1/completions", json=body) as resp:
        assert resp.status == 200


async def _run_and_watch(
    http: aiohttp.ClientSession, handle: EngineHandle, jobs: asyncio.Future[object]
) -> tuple[float, float]:
    """Scrape /metrics until the jobs finish; return the peaks of waiting and KV usage."""
    peak_waiting = peak_kv = 0.0
    while not jobs.done():
        samples = await scrape(http, handle)
        peak_waiting = max(peak_waiting, value(samples, "vllm:num_requests_waiting"))
        peak_kv = max(peak_kv, value(samples, "vllm:kv_cache_usage_perc"))
        await asyncio.wait({jobs}, timeout=0.005)
    await jobs
    return peak_waiting, peak_kv


async def _mean_ttft(http: aiohttp.ClientSession, handle: EngineHandle) -> float:
    samples = await scrape(http, handle)
    count = value(samples, "vllm:time_to_first_token_seconds_count")
    return value(samples, "vllm:time_to_first_token_seconds_sum") / count


async def test_overload_fills_queue_and_kv_cache(
    host: SimHost, http: aiohttp.ClientSession
) -> None:
    over = await host.add(_small_engine())
    jobs = asyncio.ensure_future(asyncio.gather(*(_complete(http, over, i) for i in range(18))))
    peak_waiting, peak_kv = await _run_and_watch(http, over, jobs)
    assert peak_waiting >= 5
    assert peak_kv >= 0.9

    under = await host.add(_small_engine())
    for i in range(4):  # one at a time: far below capacity
        jobs = asyncio.ensure_future(_complete(http, under, i))
        waiting, kv = await _run_and_watch(http, under, jobs)
        assert waiting == 0
        assert kv <= 0.4

    assert await _mean_ttft(http, over) > 3 * await _mean_ttft(http, under)
    final = await scrape(http, over)
    assert value(final, "vllm:num_requests_waiting") == 0
    assert value(final, "vllm:num_requests_running") == 0
    assert value(final, "vllm:kv_cache_usage_perc") == 0
