"""Bad requests get vLLM's error shape; unknown fields are accepted."""

from __future__ import annotations

import aiohttp
import pytest

from factory_sim.server import EngineHandle


def _assert_vllm_error(body: dict[str, object], status: int, err_type: str) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status and error["type"] == err_type
    assert isinstance(error["message"], str) and error["message"]


@pytest.mark.parametrize(
    ("path", "payload", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", b'{"model": "llama-8b"}', "messages"),
        ("/v1/completions", b'{"model": "llama-8b"}', "prompt"),
        ("/v1/embeddings", b'{"model": "llama-8b"}', "input"),
        (
            "/v1/chat/completions",
            b'{"model":"llama-8b","messages":[{"role":"user","content":"x"}],"max_tokens":-1}',
            "max_tokens",
        ),
        ("/v1/completions", b'{"prompt":"x","stream_options":{"include_usage":true}}', None),
    ],
)
async def test_malformed_requests_are_400(
    http: aiohttp.ClientSession,
    engine: EngineHandle,
    path: str,
    payload: bytes,
    param: str | None,
) -> None:
    async with http.post(
        f"{engine.url}{path}", data=payload, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        body = await resp.json()
    _assert_vllm_error(body, 400, "BadRequestError")
    if param is not None:
        assert body["error"]["param"] == param


async def test_prompt_over_the_limit_is_400(
    http: aiohttp.ClientSession, engine: EngineHandle
) -> None:
    limit = engine.engine.limits.max_model_len
    body = {"model": "llama-8b", "prompt": "abcd" * (limit + 10), "max_tokens": 1}
    async with http.post(f"{engine.url}/v1/completions", json=body) as resp:
        assert resp.status == 400
        err = await resp.json()
    _assert_vllm_error(err, 400, "BadRequestError")
    assert err["error"]["param"] == "input_tokens"
    assert f"maximum context length is {limit} tokens" in err["error"]["message"]


async def test_a_completion_that_would_overflow_is_cut_to_fit(
    http: aiohttp.ClientSession, engine: EngineHandle
) -> None:
    # As vLLM 0.32: prompt + max_tokens over the limit is not refused; max_tokens shrinks.
    limit = engine.engine.limits.max_model_len
    body = {"model": "llama-8b", "prompt": [7] * (limit - 3), "max_tokens": 50, "ignore_eos": True}
    async with http.post(f"{engine.url}/v1/completions", json=body) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["choices"][0]["finish_reason"] == "length"


async def test_unknown_model_is_404(http: aiohttp.ClientSession, engine: EngineHandle) -> None:
    body = {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}
    async with http.post(f"{engine.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 404
        err = await resp.json()
    _assert_vllm_error(err, 404, "NotFoundError")
    assert err["error"]["message"] == "The model `gpt-9` does not exist."


async def test_unknown_fields_are_allowed(
    http: aiohttp.ClientSession, engine: EngineHandle
) -> None:
    body = {
        "model": "llama-8b",
        "messages": [{"role": "user", "content": "x", "name": "me"}],
        "max_tokens": 2,
        "top_k": 5,
        "frobnicate": {"a": 1},
        "tenant_hint": "eu",
    }
    async with http.post(f"{engine.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
