"""/metrics parses with prometheus_client and matches the list checked against vLLM."""

from __future__ import annotations

import aiohttp
import pytest

from factory_sim.engine.metric_names import (
    FINISH_REASONS,
    SIM_REQUESTS,
    VLLM_METRICS,
    build_1_2_5_buckets,
)
from factory_sim.server import EngineHandle

from .conftest import scrape, value

REQUIRED_BY_DESIGN = {  # DESIGN.md section 5 and issue 4
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
}


async def _one_request(http: aiohttp.ClientSession, handle: EngineHandle) -> None:
    body = {"model": "llama-8b", "prompt": "hello there", "max_tokens": 5, "ignore_eos": True}
    async with http.post(f"{handle.url}/v1/completions", json=body) as resp:
        assert resp.status == 200


async def test_families_names_types_labels_match_checked_list(
    http: aiohttp.ClientSession, engine: EngineHandle
) -> None:
    await _one_request(http, engine)
    samples = await scrape(http, engine)
    families = samples["__families__"]
    assert {spec.name for spec in VLLM_METRICS} >= REQUIRED_BY_DESIGN
    for spec in VLLM_METRICS:
        family = families[spec.name]
        assert family.type == spec.type, spec.name
        assert family.samples, spec.name
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            expected = {"model_name", "engine", *spec.extra_labels}
            if spec.type == "histogram" and sample.name.endswith("_bucket"):
                expected.add("le")
            assert set(sample.labels) == expected, sample
            assert sample.labels["model_name"] == "llama-8b"
            assert sample.labels["engine"] == "0"


async def test_histogram_buckets_are_vllms(
    http: aiohttp.ClientSession, engine: EngineHandle
) -> None:
    await _one_request(http, engine)
    families = (await scrape(http, engine))["__families__"]
    max_model_len = engine.engine.limits.max_model_len
    for spec in VLLM_METRICS:
        if spec.type != "histogram":
            continue
        bounds = [
            float(s.labels["le"])
            for s in families[spec.name].samples
            if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
        ]
        expected = spec.buckets or build_1_2_5_buckets(max_model_len)
        assert bounds == list(expected), spec.name


async def test_counters_move_with_traffic(
    http: aiohttp.ClientSession, engine: EngineHandle
) -> None:
    await _one_request(http, engine)
    samples = await scrape(http, engine)
    assert value(samples, "vllm:request_success_total", finished_reason="length") == 1
    assert {r for r in FINISH_REASONS} <= {
        s.labels["finished_reason"] for s in samples["__families__"]["vllm:request_success"].samples
    }
    assert value(samples, "vllm:generation_tokens_total") == 5
    assert value(samples, "vllm:prompt_tokens_total") == 3  # "hello there": 11 chars / 4
    assert value(samples, "vllm:time_to_first_token_seconds_count") == 1
    assert value(samples, "vllm:inter_token_latency_seconds_count") == 4
    requests = samples["__families__"][SIM_REQUESTS.name]
    assert requests.type == "counter"
    assert (
        value(samples, "factory_sim_requests_total", path="/v1/completions", model_name="llama-8b")
        == 1
    )


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/version"])
async def test_plain_endpoints(
    http: aiohttp.ClientSession, engine: EngineHandle, path: str
) -> None:
    async with http.get(f"{engine.url}{path}") as resp:
        assert resp.status == 200
