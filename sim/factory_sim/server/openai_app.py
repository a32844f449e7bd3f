"""The aiohttp application of one simulated engine: the OpenAI subset vLLM serves.

Routes: POST /v1/chat/completions, /v1/completions, /v1/embeddings; GET /v1/models,
/health, /metrics, /version. Every /v1 request is counted in
``factory_sim_requests_total{path,model_name}``; then the request waits the round trip
between the caller's region (header ``x-factory-router-region``) and the engine's, plus any
injected stall, before the engine sees it: so the first byte is late by exactly that much.
While the engine is loading (``behaviour.load_s``) /health and /v1 answer 503; a share
``behaviour.error_rate`` of /v1 requests is answered ``behaviour.error_status``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import struct
import time
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from factory_sim.engine import SamplingRequest, Sequence, SimEngine
from factory_sim.engine.tokenizer import count_tokens, encode, render_chat
from factory_sim.server import errors, responses
from factory_sim.server.faults import Faults
from factory_sim.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)

REGION_HEADER = "x-factory-router-region"
GREEDY_BELOW = 1e-5  # vLLM samples greedily below this temperature
ENGINE_KEY = web.AppKey("engine", SimEngine)
FAULTS_KEY = web.AppKey("faults", Faults)
_Body = TypeVar("_Body", bound=BaseModel)


def build_app(engine: SimEngine, faults: Faults, engine_id: str) -> web.Application:
    app = web.Application()
    app[ENGINE_KEY] = engine
    app[FAULTS_KEY] = faults
    created = int(time.time())

    async def models(request: web.Request) -> web.Response:
        engine.metrics.count_request(request.path, "")
        names = engine.config.served_model_names
        return web.json_response(responses.models_list(names, engine.limits.max_model_len, created))

    async def health(request: web.Request) -> web.Response:
        await _network_delay(request)  # a health probe crosses the same network
        return web.Response(status=503 if faults.spec.unhealthy or engine.loading else 200)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=engine.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.12.0+factory-sim"})

    async def tag(_: web.Request, response: web.StreamResponse) -> None:
        # As the head is sent (a middleware would be too late for a stream): which engine
        # answered and where, whoever routed the request there (bench/fleet_routing).
        response.headers["x-factory-sim-engine"] = engine_id
        response.headers["x-factory-sim-region"] = engine.config.region

    app.on_response_prepare.append(tag)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/version", version)
    return app


async def _parse(request: web.Request, model: type[_Body]) -> _Body | web.Response:
    engine = request.app[ENGINE_KEY]
    try:
        raw = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        engine.metrics.count_request(request.path, "")
        return errors.bad_request(f"JSON decode error: {exc}")
    name = raw.get("model") if isinstance(raw, dict) else None
    engine.metrics.count_request(request.path, name if isinstance(name, str) else "")
    if not isinstance(raw, dict):
        return errors.bad_request("The request body must be a JSON object.")
    try:
        body = model.model_validate(raw)
    except ValidationError as exc:
        return errors.from_validation_error(exc)
    requested = getattr(body, "model", None)
    if requested is not None and requested not in engine.config.served_model_names:
        return errors.model_not_found(requested)
    return body


async def _before_engine(request: web.Request) -> web.Response | None:
    """Injected failure, stall and inter-region round trip: all before the first byte."""
    faults = request.app[FAULTS_KEY]
    engine = request.app[ENGINE_KEY]
    if engine.loading:
        return errors.error_response(503, "the engine is loading its model")
    status = faults.take_error()
    if status is not None:
        return errors.error_response(status, f"injected fault: HTTP {status}")
    status = engine.draw_error()
    if status is not None:
        return errors.error_response(status, f"simulated bad revision: HTTP {status}")
    await faults.stall()
    await _network_delay(request)
    return None


async def _network_delay(request: web.Request) -> None:
    """The round trip between the caller's region (REGION_HEADER) and the engine's."""
    engine = request.app[ENGINE_KEY]
    caller = request.headers.get(REGION_HEADER)
    if caller is not None:
        rtt_ms = engine.config.rtt_ms.get(caller, 0.0)
        if rtt_ms > 0:
            await asyncio.sleep(rtt_ms / 1000.0 * engine.config.time_scale)


def _sampling(
    engine: SimEngine,
    body: ChatCompletionRequest | CompletionRequest,
    prompt_ids: list[int],
    max_tokens: int | None,
) -> SamplingRequest | web.Response:
    limit = engine.limits.max_model_len
    prompt_len = len(prompt_ids)
    # As vLLM 0.32 does: a prompt over the limit is refused (its tokenizer stops counting at
    # limit + 1, hence "at least"); a completion that would overflow is cut to what fits.
    if prompt_len > limit:
        return errors.bad_request(
            f"This model's maximum context length is {limit} tokens. However, your prompt "
            f"contains at least {limit + 1} input tokens, which exceeds this limit even without "
            "any output tokens. Please reduce the length of the input prompt. "
            f"(parameter=input_tokens, value={limit + 1})",
            "input_tokens",
        )
    room = limit - prompt_len
    max_tokens = room if max_tokens is None else min(max_tokens, room)
    if max_tokens < 1:
        return errors.bad_request(
            f"max_tokens must be at least 1, got {max_tokens}. "
            f"(parameter=max_tokens, value={max_tokens})",
            "max_tokens",
        )
    return SamplingRequest(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
        seed=body.seed,
        max_tokens_param=max_tokens,
        greedy=body.temperature is not None and body.temperature < GREEDY_BELOW,
    )


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, ChatCompletionRequest)
    if isinstance(body, web.Response):
        return body
    engine = request.app[ENGINE_KEY]
    prompt_ids = encode(render_chat(m.model_dump() for m in body.messages))
    wanted = body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens
    sampling = _sampling(engine, body, prompt_ids, wanted)
    if isinstance(sampling, web.Response):
        return sampling
    model = body.model or engine.config.served_model_names[0]
    return await _generate(request, sampling, body, responses.ChatChunks(model), chat=True)


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, CompletionRequest)
    if isinstance(body, web.Response):
        return body
    engine = request.app[ENGINE_KEY]
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            return errors.bad_request("the simulator serves one prompt per request", "prompt")
        prompt = prompt[0]
    prompt_ids = encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]  # type: ignore[arg-type]
    sampling = _sampling(engine, body, prompt_ids, body.max_tokens)
    if isinstance(sampling, web.Response):
        return sampling
    model = body.model or engine.config.served_model_names[0]
    return await _generate(request, sampling, body, responses.CompletionChunks(model), chat=False)


async def _generate(
    request: web.Request,
    sampling: SamplingRequest,
    body: ChatCompletionRequest | CompletionRequest,
    chunks: responses.ChatChunks | responses.CompletionChunks,
    chat: bool,
) -> web.StreamResponse:
    engine = request.app[ENGINE_KEY]
    failed = await _before_engine(request)
    if failed is not None:
        return failed
    seq = engine.submit(sampling)
    try:
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream(request, seq, chunks, include_usage)
        texts: list[str] = []
        while True:
            event = await seq.events.get()
            texts.append(event.text)
            if event.finish_reason is not None:
                break
        build = responses.chat_completion if chat else responses.text_completion
        return web.json_response(
            build(chunks.model, "".join(texts), event.finish_reason, seq.prompt_len, seq.generated)
        )
    finally:
        engine.abort(seq)  # no-op once finished; frees the slot if the client went away


async def _stream(
    request: web.Request,
    seq: Sequence,
    chunks: responses.ChatChunks | responses.CompletionChunks,
    include_usage: bool,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    first = True
    while True:
        event = await seq.events.get()
        if first:
            await response.prepare(request)
            role = chunks.role()
            if role is not None:
                await response.write(responses.sse(role))
            first = False
        if event.text or event.finish_reason is not None:
            await response.write(responses.sse(chunks.token(event.text, event.finish_reason)))
        if event.finish_reason is not None:
            break
    if include_usage:
        await response.write(responses.sse(chunks.usage(seq.prompt_len, seq.generated)))
    await response.write(responses.sse("[DONE]"))
    await response.write_eof()
    return response


async def _embeddings(request: web.Request) -> web.StreamResponse:
    body = await _parse(request, EmbeddingRequest)
    if isinstance(body, web.Response):
        return body
    engine = request.app[ENGINE_KEY]
    inputs: list[str | list[int]]
    if isinstance(body.input, str):
        inputs = [body.input]
    elif body.input and isinstance(body.input[0], int):
        inputs = [[int(t) for t in body.input]]
    else:
        inputs = list(body.input)  # type: ignore[arg-type]
    if not inputs:
        return errors.bad_request("input must not be empty", "input")
    failed = await _before_engine(request)
    if failed is not None:
        return failed
    counts = [count_tokens(i) if isinstance(i, str) else len(i) for i in inputs]
    await engine.embed(sum(counts))
    dim = body.dimensions or engine.profile.embedding_dim
    data: list[dict[str, Any]] = []
    for index, item in enumerate(inputs):
        vector = _embedding(item if isinstance(item, str) else json.dumps(item), dim)
        value: list[float] | str = vector
        if body.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
        data.append({"index": index, "object": "embedding", "embedding": value})
    model = body.model or engine.config.served_model_names[0]
    return web.json_response(
        {
            "id": responses.new_id("embd"),
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": data,
            "usage": {
                "prompt_tokens": sum(counts),
                "total_tokens": sum(counts),
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
    )


def _embedding(text: str, dim: int) -> list[float]:
    """A unit vector that depends only on the text (same text, same vector)."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    raw = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
