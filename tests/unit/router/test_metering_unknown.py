"""Metering when the usage cannot be read (the hostile review's findings 2, 3, 6, 7): a
usage behind vLLM's `prompt_logprobs`, a client gone before the answer, an encoded stream,
values nested too deep. Never a settle at 0 for work an engine may have done; never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import time
from typing import Any

import httpx
from aiohttp import web

from factory_router.app.logs import AccessLog
from factory_router.metering.usage import Usage
from factory_router.policy.fleet import Backend
from factory_router.quota.buckets import Estimate
from factory_router.quota.service import Ticket, used_tokens
from tests.unit.router.router_testkit import TENANTS_DOC, auth, router, wait_until
from tests.unit.router.test_metering_proxy import CONTENT, DONE, USAGE, upstream

TOKENS_PER_MINUTE = 100_000
H = auth("eu")


def _tenants() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(TENANTS_DOC))
    doc["tenants"][0]["tokens_per_minute"] = TOKENS_PER_MINUTE  # "eu-only", the key of `H`
    return doc


def _backend(url: str) -> Backend:
    return Backend(id="e", model="m", pool="p", region="eu-west-1", url=url)


def _records(sink: io.BytesIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sink.getvalue().splitlines()]


def _remaining(reply: httpx.Response) -> int:
    return int(reply.headers["x-ratelimit-remaining-tokens"])


def _vllm_answer(prompt_tokens: int) -> bytes:
    """vLLM's ChatCompletionResponse field order: ..., `usage`, then `prompt_logprobs`."""
    doc = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + 900,
                  "completion_tokens": 900},
        "prompt_logprobs": [None] + [
            {str(1000 + i): {"logprob": -1.2345678, "rank": 1, "decoded_token": "tok"}}
            for i in range(prompt_tokens - 1)
        ],
    }  # fmt: skip
    return json.dumps(doc).encode()


BODY = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 900}


async def test_a_usage_followed_by_prompt_logprobs_is_metered_and_settled() -> None:
    """Review: 140 KB answers (usage 140 KB before the end) were metered None and settled
    at 0 (remaining tokens 99076, 99076, 99076). Held in memory (2,000 prompt tokens) or
    relayed in pieces (20,000: 1.4 MB), the usage is read; each request is charged it."""
    for prompt_tokens in (2000, 20_000):
        answer_bytes = _vllm_answer(prompt_tokens)

        async def answer(_: web.Request, __: dict[str, Any], data: bytes = answer_bytes) -> Any:
            return web.Response(body=data, content_type="application/json")

        sink = io.BytesIO()
        async with (
            upstream(answer) as (url, _),
            router([_backend(url)], tenants_doc=_tenants(), access_log=AccessLog(sink)) as r,
            httpx.AsyncClient(base_url=r.url, timeout=10) as c,
        ):
            first = await c.post("/v1/chat/completions", json=BODY, headers=H)
            assert first.content == answer_bytes
            second = await c.post("/v1/chat/completions", json=BODY, headers=H)
            r.state.access_log.flush()
        used = prompt_tokens + 900
        # The second reservation equals the first: the drop is what the first used (less
        # the bucket's refill meanwhile, 1,667 tokens a second).
        drop = _remaining(first) - _remaining(second)
        assert used - 1000 <= drop <= used, (prompt_tokens, drop)
        record = _records(sink)[0]
        assert (record["prompt_tokens"], record["completion_tokens"], record["usage"]) == (
            prompt_tokens,
            900,
            "engine",
        )


async def test_a_client_gone_before_the_answer_settles_at_the_reservation() -> None:
    """Review: six abandoned requests of 7,000 tokens each against 10,000 a minute were all
    given back (settle 0). Now the first keeps its reservation and the next is refused."""
    tenants = _tenants()
    tenants["tenants"][0]["tokens_per_minute"] = 10_000
    arrived, release = asyncio.Event(), asyncio.Event()

    async def answer(_: web.Request, __: dict[str, Any]) -> web.Response:
        arrived.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 5)
        usage = {"prompt_tokens": 3000, "completion_tokens": 4000, "total_tokens": 7000}
        return web.json_response({"id": "x", "choices": [], "usage": usage})

    body = {**BODY, "messages": [{"role": "user", "content": "x" * 12_000}], "max_tokens": 4000}
    sink = io.BytesIO()
    async with (
        upstream(answer) as (url, _),
        router([_backend(url)], tenants_doc=tenants, access_log=AccessLog(sink)) as r,
        httpx.AsyncClient(base_url=r.url, timeout=10) as c,
    ):
        gone = asyncio.create_task(c.post("/v1/chat/completions", json=body, headers=H))
        await arrived.wait()
        gone.cancel()

        def logged() -> bool:
            r.state.access_log.flush()
            return bool(sink.getvalue())

        await wait_until(logged, what="the abandoned request's record")
        release.set()
        again = await c.post("/v1/chat/completions", json=body, headers=H)
    assert again.status_code == 429
    (record,) = [x for x in _records(sink) if x["status"] == 499]
    assert (record["prompt_tokens"], record["completion_tokens"], record["usage"]) == (
        None,
        None,
        "unknown",
    )


DEEP = b"[" * 5000 + b"]" * 5000


async def test_an_answer_whose_usage_cannot_be_read_is_settled_at_the_reservation() -> None:
    """Review: a usage chunk or JSON answer nested 5,000 deep was a 500 for the client (the
    access log said 200), settled at 0. Now: relayed, recorded `unknown`, the whole
    reservation kept; so is a 2xx JSON answer without usage."""
    shapes = {
        "deep json": b'{"id":"x","choices":[],"usage":' + DEEP + b"}",
        "no usage": b'{"id":"x","choices":[]}',
        "deep chunk": CONTENT + b"\n\n" + b'data: {"choices":[],"usage":{"prompt_tokens":1,'
        b'"x":' + DEEP + b"}}\n\n" + DONE + b"\n\n",
    }  # fmt: skip

    async def answer(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        data = shapes[body["messages"][0]["content"]]
        if not body.get("stream"):
            return web.Response(body=data, content_type="application/json")
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        await reply.write(data)
        await reply.write_eof()
        return reply

    sink = io.BytesIO()
    async with (
        upstream(answer) as (url, _),
        router([_backend(url)], tenants_doc=_tenants(), access_log=AccessLog(sink)) as r,
        httpx.AsyncClient(base_url=r.url, timeout=10) as c,
    ):
        for name in shapes:
            body = {**BODY, "messages": [{"role": "user", "content": name}]}
            if name == "deep chunk":
                body["stream"] = True
            began = time.monotonic()
            first = await c.post("/v1/chat/completions", json=body, headers=H)
            assert first.status_code == 200
            if name == "deep chunk":  # the router asked for it: never relayed
                assert first.content == CONTENT + b"\n\n" + DONE + b"\n\n"
            second = await c.post("/v1/chat/completions", json=body, headers=H)
            # The bucket refills TOKENS_PER_MINUTE / 60 a second between the two answers'
            # counts (a busy machine stretches that: CI once took 0.2 s, 350 tokens).
            refill = TOKENS_PER_MINUTE / 60 * (time.monotonic() - began)
            reserved = 900 + -(-len(json.dumps(body)) // 4)  # about: the body's bytes / 4
            drop = _remaining(first) - _remaining(second)
            assert drop >= reserved - 100 - refill, (name, drop, refill)
        r.state.access_log.flush()
    assert [(x["status"], x["usage"]) for x in _records(sink)] == [(200, "unknown")] * 6


async def test_an_encoded_stream_is_refused_when_the_router_asked_for_its_usage() -> None:
    """Review: a gzip event stream was relayed unread: the usage chunk the router asked for
    reached a client that did not ask, and 0 tokens were recorded. Now: 502 before the first
    byte when the router asked; relayed as it came when the client asked; both `unknown`,
    settled at the reservation."""
    raw = CONTENT + b"\n\n" + USAGE + b"\n\n" + DONE + b"\n\n"

    async def answer(_: web.Request, __: dict[str, Any]) -> web.Response:
        headers = {"Content-Type": "text/event-stream", "Content-Encoding": "gzip"}
        return web.Response(body=gzip.compress(raw), headers=headers)

    sink = io.BytesIO()
    async with (
        upstream(answer) as (url, seen),
        router([_backend(url)], tenants_doc=_tenants(), access_log=AccessLog(sink)) as r,
        httpx.AsyncClient(base_url=r.url, timeout=10) as c,
    ):
        body = {**BODY, "stream": True}
        refused = await c.post("/v1/chat/completions", json=body, headers=H)
        asked = {**body, "stream_options": {"include_usage": True}}
        relayed = await c.post("/v1/chat/completions", json=asked, headers=H)
        r.state.access_log.flush()
    assert seen[0]["stream_options"] == {"include_usage": True}  # the router asked
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "upstream_error"
    assert b"usage" not in refused.content.replace(b"encoding", b"")
    assert relayed.status_code == 200 and relayed.content == raw  # httpx decodes the gzip
    records = _records(sink)
    assert [(x["status"], x["usage"]) for x in records] == [(502, "unknown"), (200, "unknown")]
    # Settled at the reservation: the second request's header shows the first one's whole
    # reservation still taken.
    assert _remaining(relayed) < TOKENS_PER_MINUTE - 2 * 900


async def test_a_body_nested_too_deeply_is_a_400_never_a_500() -> None:
    """Review: a tenant's body nested ~985 deep was a 500 (json.loads or json.dumps raised
    RecursionError). Every depth is now a 200 or a 400 saying why."""

    async def answer(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        await reply.write(CONTENT + b"\n\n" + USAGE + b"\n\n" + DONE + b"\n\n")
        await reply.write_eof()
        return reply

    statuses: set[int] = set()
    async with (
        upstream(answer) as (url, _),
        router([_backend(url)]) as r,
        httpx.AsyncClient(base_url=r.url, timeout=10) as c,
    ):
        for depth in [*range(900, 1010, 3), 5000]:
            deep = "[" * depth + "]" * depth
            for raw in (
                '{"model":"m","messages":[],"stream":true,"stream_options":null,"x":' + deep + "}",
                '{"model":"m","messages":[{"role":"user","content":' + deep + '}],"stream":true}',
            ):
                reply = await c.post(
                    "/v1/chat/completions",
                    content=raw,
                    headers={**H, "content-type": "application/json"},
                )
                statuses.add(reply.status_code)
                if reply.status_code == 400:
                    error = reply.json()["error"]
                    assert error["type"] == "invalid_request_error"
                    assert "nests too deeply" in error["message"]
                else:
                    assert reply.status_code == 200, (depth, reply.content[:200])
    assert statuses == {200, 400}


def test_used_tokens_is_the_reservation_when_an_engine_may_have_worked_unmetered() -> None:
    ticket = Ticket("t", (), (), Estimate(prompt=30, completion=100), False, {})
    assert used_tokens(ticket, None, unknown=True) == 130  # fail closed
    assert used_tokens(ticket, None) == 0  # no engine got it, or it refused it
    assert used_tokens(ticket, Usage(None, 7, "estimated")) == 37
    assert used_tokens(ticket, Usage(12, 7, "engine"), unknown=True) == 19
