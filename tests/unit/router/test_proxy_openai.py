"""The official `openai` client, sync and async, streaming and not, through the router."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import openai

from tests.unit.router.router_testkit import (
    ADMIN_KEY,
    KEYS,
    admin,
    auth,
    backend,
    engines,
    router,
)


async def test_async_client_chat_completions_embeddings_models() -> None:
    async with engines(1) as (eu,), router([backend(eu, "eu-pool", "eu-west-1")]) as r:
        client = openai.AsyncOpenAI(base_url=r.url + "/v1", api_key=KEYS["eu"], max_retries=0)
        async with client:
            chat = await client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            assert chat.headers["x-factory-region"] == "eu-west-1"
            assert chat.headers["x-factory-jurisdiction"] == "EU"
            assert chat.headers["x-factory-pool"] == "eu-pool"
            assert chat.headers["x-request-id"]
            assert chat.parse().choices[0].message.content == "hello"
            comp = await client.completions.create(model="m", prompt="hi")
            assert comp.choices[0].text == "hello"
            emb = await client.embeddings.create(model="m", input="hi")
            assert emb.data[0].embedding == [0.1, 0.2]
            models = await client.models.list()
            assert [m.id for m in models.data] == ["m"]
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = [c.choices[0].delta.content async for c in stream if c.choices]
            assert text == [f"t{i} " for i in range(5)]
            cstream = await client.completions.create(model="m", prompt="x", stream=True)
            assert len([c async for c in cstream]) == 5
        assert eu.counts["/v1/chat/completions"] == 2
        assert eu.counts["/v1/completions"] == 2
        assert eu.counts["/v1/embeddings"] == 1
        # The router tells the engine its region and never forwards the tenant's key.
        seen = eu.headers_seen[0]
        assert seen["x-factory-router-region"] == "eu-west-1"
        assert "Authorization" not in seen and KEYS["eu"] not in str(eu.headers_seen)


async def test_sync_client_streaming_and_not() -> None:
    async with engines(1) as (eu,), router([backend(eu, "eu-pool", "eu-west-1")]) as r:

        def run_sync() -> tuple[str, list[str]]:
            with openai.OpenAI(
                base_url=r.url + "/v1", api_key=KEYS["global"], max_retries=0
            ) as client:
                plain = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
                stream = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
                return plain.choices[0].message.content or "", parts

        plain, parts = await asyncio.to_thread(run_sync)
        assert plain == "hello" and len(parts) == 5


async def test_openai_errors_have_openai_shape() -> None:
    async with engines(1) as (eu,), router([backend(eu, "eu-pool", "eu-west-1")]) as r:
        async with openai.AsyncOpenAI(
            base_url=r.url + "/v1", api_key="wrong", max_retries=0
        ) as client:
            try:
                await client.models.list()
            except openai.AuthenticationError as exc:
                assert exc.code == "invalid_api_key"
            else:
                raise AssertionError("expected 401")
        async with openai.AsyncOpenAI(
            base_url=r.url + "/v1", api_key=KEYS["eu"], max_retries=0
        ) as client:
            try:
                await client.chat.completions.create(model="nope", messages=[])
            except openai.NotFoundError as exc:
                assert exc.code == "model_not_found"
            else:
                raise AssertionError("expected 404")
        assert eu.total == 0


async def test_unknown_fields_pass_through_and_request_id_propagates() -> None:
    async with engines(1) as (eu,), router([backend(eu, "eu-pool", "eu-west-1")]) as r:
        async with httpx.AsyncClient(base_url=r.url) as c:
            resp = await c.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [], "vllm_xargs": {"x": 1}, "top_k": 3},
                headers={**auth("eu"), "x-request-id": "req-123"},
            )
        assert resp.status_code == 200
        assert resp.headers["x-request-id"] == "req-123"
        assert eu.bodies_seen[0]["vllm_xargs"] == {"x": 1} and eu.bodies_seen[0]["top_k"] == 3
        assert eu.headers_seen[0]["x-request-id"] == "req-123"


async def test_an_engines_cookie_reaches_neither_another_request_nor_the_client() -> None:
    async with engines(1) as (eu,):
        eu.set_cookie = "session=tenant-a-secret; Path=/"
        # By host name, as a regional endpoint is reached (cookie jars ignore bare IPs).
        named = replace(
            backend(eu, "eu-pool", "eu-west-1"), url=eu.url.replace("127.0.0.1", "localhost")
        )
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with router([named]) as r, httpx.AsyncClient(base_url=r.url) as c:
            first = await c.post("/v1/chat/completions", json=body, headers=auth("eu"))
            second = await c.post("/v1/chat/completions", json=body, headers=auth("global"))
        assert first.status_code == second.status_code == 200
        assert "set-cookie" not in first.headers
        assert [h.get("cookie") for h in eu.headers_seen] == [None, None]


async def test_explain_is_admin_only_and_shows_every_candidate() -> None:
    async with (
        engines(3) as (a, b, us),
        router(
            [
                backend(a, "eu-a", "eu-west-1"),
                backend(b, "eu-b", "eu-central-1"),
                backend(us, "us-a", "us-east-1"),
            ]
        ) as r,
    ):
        async with httpx.AsyncClient(base_url=r.url) as c:  # the tenants' port has no admin
            hidden = await c.get(
                "/admin/explain", params={"tenant": "eu-only", "model": "m"}, headers=auth("admin")
            )
            assert hidden.status_code == 404
        async with admin(r) as c:
            denied = await c.get(
                "/admin/explain", params={"tenant": "eu-only", "model": "m"}, headers=auth("eu")
            )
            assert denied.status_code == 403
            resp = await c.get(
                "/admin/explain",
                params={"tenant": "eu-only", "model": "m"},
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
            )
        assert resp.status_code == 200
        doc = resp.json()
        verdicts = {row["pool"]: row["verdict"] for row in doc["candidates"]}
        assert verdicts == {
            "eu-a": "chosen",
            "eu-b": "failover #1",
            "us-a": "excluded: jurisdiction US not allowed",
        }
        assert doc["outcome"] == "routable" and doc["allowed_jurisdictions"] == ["EU"]
        assert a.total == b.total == us.total == 0


async def test_unknown_path_is_an_openai_shaped_404() -> None:
    async with router([]) as r, httpx.AsyncClient(base_url=r.url) as c:
        resp = await c.post("/v1/nope", json={})
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
