"""Bounded per tenant (issue 13, item 3): concurrent requests per tenant (429 before any
engine is asked), and what a client sent is clipped where the router repeats it."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from factory_router.app.logs import AccessLog
from factory_router.policy.config import Limits, RouterConfig, Timeouts
from factory_router.policy.errors import ECHO_MAX_CHARS, MAX_MESSAGE_CHARS, PolicyError, clip
from factory_router.policy.tenants import parse_tenants
from tests.unit.router.router_testkit import (
    TENANTS_DOC,
    auth,
    backend,
    engines,
    router,
    wait_until,
)

STREAM = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _doc_with_limit(tenant: str, limit: int) -> dict[str, Any]:
    doc = json.loads(json.dumps(TENANTS_DOC))
    for t in doc["tenants"]:
        if t["name"] == tenant:
            t["max_concurrent_requests"] = limit
    return doc


async def _hold_streams(
    stack: AsyncExitStack, c: httpx.AsyncClient, who: str, n: int
) -> list[AsyncIterator[str]]:
    """`n` streams of `who` that stay open (the engine streams until the client leaves);
    their line iterators are returned to be kept: one collected closes its stream."""
    held = []
    for _ in range(n):
        resp = await stack.enter_async_context(
            c.stream("POST", "/v1/chat/completions", json=STREAM, headers=auth(who))
        )
        assert resp.status_code == 200
        lines = resp.aiter_lines()
        assert (await anext(lines)).startswith("data:")
        held.append(lines)
    return held


@pytest.mark.parametrize(
    ("tenants_doc", "config_limit"),
    [(_doc_with_limit("eu-only", 2), 0), (TENANTS_DOC, 2)],
    ids=["tenants-file", "router-default"],
)
async def test_a_tenant_at_its_limit_gets_429_and_no_engine_sees_it(
    tenants_doc: dict[str, Any], config_limit: int
) -> None:
    cfg = RouterConfig(
        timeouts=Timeouts(first_byte=5.0, grace_period=1.0),
        limits=Limits(tenant_max_concurrent_requests=config_limit),
    )
    async with (
        engines(1, mode="slow_stream", chunk_delay=0.02) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1")], config=cfg, tenants_doc=tenants_doc) as r,
        httpx.AsyncClient(base_url=r.url, timeout=10) as c,
    ):
        async with AsyncExitStack() as held:
            streams = await _hold_streams(held, c, "eu", 2)
            refused = await c.post("/v1/chat/completions", json=STREAM, headers=auth("eu"))
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert error["type"] == error["code"] == "rate_limit_exceeded"
            assert "eu-only" in error["message"]
            assert eu.total == 2 and len(streams) == 2  # refused before any engine saw it
            # Another tenant is not limited by this one's requests.
            async with AsyncExitStack() as other:
                assert len(await _hold_streams(other, c, "global", 1)) == 1
            assert eu.total == 3
        await wait_until(lambda: eu.active == 0, timeout=5, what="streams closed")
        await wait_until(
            lambda: r.state.tenant_limits.inflight("eu-only") == 0, timeout=5, what="released"
        )
        async with AsyncExitStack() as again:
            assert len(await _hold_streams(again, c, "eu", 2)) == 2  # the slots came back


def test_max_concurrent_requests_must_be_positive() -> None:
    with pytest.raises(PolicyError, match="max_concurrent_requests"):
        parse_tenants(_doc_with_limit("eu-only", 0))
    table = parse_tenants(_doc_with_limit("eu-only", 7))
    assert table.tenants["eu-only"].max_concurrent_requests == 7
    assert table.tenants["us-only"].max_concurrent_requests is None


def test_clip_bounds_and_marks() -> None:
    assert clip("short") == "short"
    long = "x" * 10_000
    assert clip(long) == "x" * ECHO_MAX_CHARS + "...(10000 chars)"


async def test_what_a_client_sent_is_clipped_in_errors_and_the_access_log() -> None:
    sink = io.BytesIO()
    huge = "M" * 20_000
    async with (
        engines(1) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1")], access_log=AccessLog(sink)) as r,
        httpx.AsyncClient(base_url=r.url) as c,
    ):
        answers = [
            await c.post(
                "/v1/chat/completions", json={"model": huge, "messages": []}, headers=auth("eu")
            ),
            await c.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": []},
                headers={**auth("global"), "x-factory-residency": f"EU,{'Q' * 5000}"},
            ),
            await c.get("/" + "p" * 5000),
        ]
        r.state.access_log.flush()
    assert [a.status_code for a in answers] == [404, 400, 404]
    for answer in answers:
        message = answer.json()["error"]["message"]
        assert len(message) <= MAX_MESSAGE_CHARS + 32
        assert (
            "M" * (ECHO_MAX_CHARS + 1) not in message and "p" * (ECHO_MAX_CHARS + 1) not in message
        )
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert len(lines) == 2  # the proxied paths: one line each
    assert all(len(line["model"] or "") <= ECHO_MAX_CHARS + 32 for line in lines)
    assert eu.total == 0
