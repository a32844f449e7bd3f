"""Metering wired into the proxy, against an upstream whose bytes the test chooses: a usage
chunk split across writes with CRLF line ends, a sized (Content-Length) event stream, a
JSON answer too large to be relayed in one write, an engine that breaks mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from factory_router.app.logs import AccessLog
from factory_router.policy.fleet import Backend
from tests.unit.router.router_testkit import auth, router, scrape

USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":2}}'
CONTENT = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}'
DONE = b"data: [DONE]"


@asynccontextmanager
async def upstream(
    answer: Callable[[web.Request, dict[str, Any]], Any],
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        result: web.StreamResponse = await answer(request, body)
        return result

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def _backend(url: str) -> Backend:
    return Backend(id="e", model="m", pool="pool-a", region="eu-west-1", url=url)


def _value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _records(sink: io.BytesIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sink.getvalue().splitlines()]


CHAT = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}


async def test_a_usage_chunk_split_across_writes_with_crlf_is_stripped_and_counted() -> None:
    pieces = [
        CONTENT + b"\r\n\r\n" + USAGE[:30],
        USAGE[30:] + b"\r\n\r",
        b"\n" + DONE + b"\r\n\r\n",
    ]

    async def answer(request: web.Request, _: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            # The engine's pacing: the pieces usually reach the router in separate reads
            # (what the client gets must not depend on it).
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    sink = io.BytesIO()
    async with (
        upstream(answer) as (url, seen),
        router([_backend(url)], access_log=AccessLog(sink)) as r,
        httpx.AsyncClient(base_url=r.url, timeout=10) as c,
    ):
        plain = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
        asked = await c.post(
            "/v1/chat/completions",
            json={**CHAT, "stream_options": {"include_usage": True}},
            headers=auth("eu"),
        )
        metrics = await scrape(r)
    assert plain.content == CONTENT + b"\r\n\r\n" + DONE + b"\r\n\r\n"
    assert asked.content == b"".join(pieces)
    assert seen[0]["stream_options"] == {"include_usage": True}
    assert seen[1]["stream_options"] == {"include_usage": True}
    r.state.access_log.flush()
    records = _records(sink)
    assert [(x["prompt_tokens"], x["completion_tokens"], x["usage"]) for x in records] == [
        (11, 2, "engine"),
        (11, 2, "engine"),
    ]
    labels = {"tenant": "eu-only", "model": "m", "region": "eu-west-1", "pool": "pool-a"}
    assert _value(metrics, "factory_router_prompt_tokens_total", **labels) == 22
    assert _value(metrics, "factory_router_completion_tokens_total", **labels) == 4


async def test_a_sized_event_stream_is_reframed_when_its_usage_chunk_is_stripped() -> None:
    body = CONTENT + b"\n\n" + USAGE + b"\n\n" + DONE + b"\n\n"

    async def answer(_: web.Request, __: dict[str, Any]) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": "text/event-stream"})

    async with (
        upstream(answer) as (url, _),
        router([_backend(url)]) as r,
        httpx.AsyncClient(base_url=r.url, timeout=10) as c,
    ):
        reply = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
    assert reply.content == CONTENT + b"\n\n" + DONE + b"\n\n"
    assert "content-length" not in reply.headers


async def test_a_large_json_answer_relayed_in_pieces_is_metered() -> None:
    answer_doc = {
        "id": "x",
        "choices": [{"index": 0, "message": {"content": "y" * 400_000}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 100_000, "total_tokens": 100_005},
    }

    async def answer(_: web.Request, __: dict[str, Any]) -> web.Response:
        return web.json_response(answer_doc)

    sink = io.BytesIO()
    async with (
        upstream(answer) as (url, seen),
        router([_backend(url)], access_log=AccessLog(sink)) as r,
        httpx.AsyncClient(base_url=r.url, timeout=10) as c,
    ):
        reply = await c.post(
            "/v1/chat/completions", json={**CHAT, "stream": False}, headers=auth("eu")
        )
        assert reply.json() == answer_doc
        r.state.access_log.flush()
    assert "stream_options" not in seen[0]  # not a stream: sent as the client sent it
    (record,) = _records(sink)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (5, 100_000)


async def test_an_engine_that_breaks_mid_stream_leaves_an_estimate() -> None:
    async def answer(request: web.Request, _: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write((CONTENT + b"\n\n") * 3)
        assert request.transport is not None
        request.transport.close()  # no usage chunk, no [DONE], no end of the chunked body
        return response

    sink = io.BytesIO()
    async with (
        upstream(answer) as (url, _),
        router([_backend(url)], access_log=AccessLog(sink)) as r,
        httpx.AsyncClient(base_url=r.url, timeout=10) as c,
    ):
        with contextlib.suppress(httpx.HTTPError):  # a truncated answer: what it must see
            await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
        r.state.access_log.flush()
        metrics = await scrape(r)
    (record,) = _records(sink)
    assert record["status"] == 502
    assert (record["prompt_tokens"], record["completion_tokens"], record["usage"]) == (
        None,
        3,
        "estimated",
    )
    assert _value(metrics, "factory_router_completion_tokens_total", source="estimated") == 3
