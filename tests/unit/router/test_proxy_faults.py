"""Faults at the proxy: disconnects, stalls, bad bodies, failover/ejection, shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import pathlib
import time

import httpx
import pytest

from factory_router.app.logs import AccessLog
from factory_router.policy.config import Limits, RouterConfig, Timeouts
from factory_router.policy.fleet import Backend
from factory_router.policy.tenants import hash_key
from tests.unit.router.router_testkit import (
    KEYS,
    TENANTS_DOC,
    auth,
    backend,
    engines,
    readiness,
    router,
    scrape,
    wait_until,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "the secret prompt"}]}


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_client_disconnect_after_three_chunks_closes_upstream() -> None:
    async with (
        engines(1, mode="slow_stream", chunk_delay=0.02) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1")]) as r,
    ):
        async with (
            httpx.AsyncClient(base_url=r.url) as c,
            c.stream(
                "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth("eu")
            ) as resp,
        ):
            assert resp.status_code == 200
            events = 0
            async for line in resp.aiter_lines():
                events += line.startswith("data:")
                if events == 3:
                    break
            assert r.state.inflight == 1 and eu.active == 1
            closed = time.monotonic()
        await wait_until(lambda: eu.active == 0, timeout=1.0, what="upstream closed")
        assert eu.disconnected_at is not None and eu.disconnected_at - closed < 1.0
        await wait_until(lambda: r.state.inflight == 0, timeout=1.0, what="in-flight 0")
        text = await scrape(r)
        assert metric(text, "factory_router_inflight_requests") == 0
        assert r.state.load.passive.total_inflight == 0


@pytest.mark.parametrize("mode", ["stall", "stall_after_headers"])
async def test_stall_before_first_token_is_a_clear_504(mode: str) -> None:
    async with (
        engines(1, mode=mode) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1")], timeouts=Timeouts(first_byte=0.3)) as r,
    ):
        async with httpx.AsyncClient(base_url=r.url, timeout=10) as c:
            started = time.monotonic()
            resp = await c.post(
                "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth("eu")
            )
        assert time.monotonic() - started < 3
        assert resp.status_code == 504
        err = resp.json()["error"]
        assert err["code"] == "upstream_timeout" and "0.3s" in err["message"]
        await wait_until(lambda: eu.active == 0, timeout=1.0, what="stalled upstream closed")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"", 400),
        (b"[1, 2]", 400),
        (b'"model"', 400),
        (b'{"messages": []}', 400),
        (b'{"model": 42}', 400),
        (b"\xff\xfe\x00garbage", 400),
        (b'{"model": "m", "pad": "' + b"x" * 3000 + b'"}', 413),
    ],
)
async def test_malformed_and_oversized_bodies_are_4xx(body: bytes, status: int) -> None:
    cfg = RouterConfig(limits=Limits(max_body_bytes=2048))
    async with engines(1) as (eu,), router([backend(eu, "eu-a", "eu-west-1")], config=cfg) as r:
        async with httpx.AsyncClient(base_url=r.url) as c:
            resp = await c.post(
                "/v1/chat/completions",
                content=body,
                headers={**auth("eu"), "content-type": "application/json"},
            )
            assert resp.status_code == status
            assert set(resp.json()["error"]) == {"message", "type", "param", "code"}

            async def chunked() -> object:
                for _ in range(10):
                    yield b"x" * 1024

            big = await c.post("/v1/completions", content=chunked(), headers=auth("eu"))
            assert big.status_code == 413
        assert eu.total == 0


async def test_failover_ejection_and_metrics() -> None:
    async with (
        engines(2) as (bad, good),
        router([backend(bad, "eu-a", "eu-west-1"), backend(good, "eu-b", "eu-central-1")]) as r,
    ):
        bad.mode = "fail"
        good.network_delay = 0.2  # far away (RTT probes measure it), so `bad` is tried first
        async with httpx.AsyncClient(base_url=r.url) as c:
            for _ in range(6):
                resp = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
                assert resp.status_code == 200 and resp.headers["x-factory-pool"] == "eu-b"
        text = await scrape(r)
        assert bad.total == 3  # ejected after 3 consecutive failures, then skipped
        assert metric(text, 'factory_router_upstream_errors_total{kind="status"') == 3
        assert metric(text, "factory_router_ejections_total") == 1
        assert metric(text, "factory_router_retries_total") == 3
        assert (
            metric(
                text, 'factory_router_requests_total{model="m",region="eu-central-1",status="200"}'
            )
            == 6
        )


async def test_a_regional_router_endpoint_is_probed_for_rtt() -> None:
    # One-cluster-per-region: the US region is reached through its own router (its
    # FleetRegion's `spec.endpoint`), which must answer the front router's RTT probes.
    async with (
        engines(1) as (us,),
        router([backend(us, "us-pool", "us-east-1")], region="us-east-1") as regional,
    ):
        us.network_delay = 0.05  # probes carry no request data but do cross the network
        entry = Backend(id="region:us-east-1/m", model="m", pool="us-pool",
                        region="us-east-1", url=regional.url)  # fmt: skip
        async with router([entry]) as front:

            async def measured() -> bool:
                load = (await readiness(front))["load_data"]
                return "us-east-1" in load["measured_rtt_ms"]

            await wait_until(measured, timeout=5, what="an RTT sample of the regional router")
        assert us.total == 0  # a probe carries no request to an engine


async def test_a_stale_endpoint_answering_404_is_failed_over() -> None:
    async with (
        engines(2) as (stale, good),
        router([backend(stale, "eu-a", "eu-west-1"), backend(good, "eu-b", "eu-central-1")]) as r,
    ):
        stale.mode = "other_model"
        async with httpx.AsyncClient(base_url=r.url) as c:
            for _ in range(4):
                resp = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
                assert resp.status_code == 200 and resp.headers["x-factory-pool"] == "eu-b"
        assert stale.total >= 1


async def test_graceful_shutdown_lets_streams_finish() -> None:
    async with (
        engines(1, chunks=20, chunk_delay=0.02) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1")]) as r,
    ):
        async with httpx.AsyncClient(base_url=r.url) as c:
            async with c.stream(
                "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth("eu")
            ) as resp:
                lines = resp.aiter_lines()
                first = await anext(lines)
                stopping = asyncio.create_task(r.stop())
                await wait_until(lambda: r.state.draining, timeout=1.0)
                rest = [line async for line in lines]
            await stopping
        events = [x for x in [first, *rest] if x.startswith("data:")]
        assert events[-1] == "data: [DONE]" and len(events) == 21
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=r.url) as c:
                await c.get("/healthz")


async def test_readyz_reports_degraded_load_data_and_routing_goes_on() -> None:
    cfg = RouterConfig(
        prometheus_interval=0.05, timeouts=Timeouts(prometheus_query=0.5, first_byte=5)
    )
    async with (
        engines(1) as (eu,),
        router(
            [backend(eu, "eu-a", "eu-west-1")], config=cfg, prometheus_url="http://127.0.0.1:9"
        ) as r,
        httpx.AsyncClient(base_url=r.url) as c,
    ):
        await wait_until(lambda: r.state.prometheus_error is not None, timeout=5)
        ready = await c.get("/readyz")  # tenant-facing: the status word only
        assert ready.status_code == 200 and ready.json() == {"status": "degraded"}
        doc = await readiness(r)
        assert doc["status"] == "degraded" and doc["load_data"]["stale"] is True
        assert doc["load_data"]["source"] == "passive-only"
        resp = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
        assert resp.status_code == 200
        text = await scrape(r)
        assert metric(text, "factory_router_load_data_stale") == 1


async def test_tenant_keys_rotate_without_restart(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(json.dumps(TENANTS_DOC))
    cfg = RouterConfig(reload_interval=0.02)
    async with (
        engines(1) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1")], config=cfg, tenants_file=path) as r,
        httpx.AsyncClient(base_url=r.url) as c,
    ):

        async def status(key: str) -> int:
            resp = await c.get("/v1/models", headers={"authorization": f"Bearer {key}"})
            return resp.status_code

        assert await status(KEYS["eu"]) == 200
        rotated = json.loads(json.dumps(TENANTS_DOC))
        rotated["tenants"][0]["api_keys_sha256"] = [hash_key("sk-eu-0002")]
        path.write_text(json.dumps(rotated))

        async def rotated_in() -> bool:
            return await status("sk-eu-0002") == 200 and await status(KEYS["eu"]) == 401

        await wait_until(rotated_in, timeout=5, what="key rotation")
        path.write_text("tenants: [broken")
        await wait_until(
            lambda: r.state.metrics.reload_errors.labels("tenants")._value.get() >= 1, timeout=5
        )
        assert await status("sk-eu-0002") == 200  # the previous good table is kept


async def test_one_json_log_line_per_request_without_prompts_or_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = io.BytesIO()
    async with (
        engines(1) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1")], access_log=AccessLog(sink)) as r,
        httpx.AsyncClient(base_url=r.url) as c,
    ):
        await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
        await c.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={**auth("eu"), "x-factory-residency": "US"},
        )
    raw = sink.getvalue().decode()
    lines = [json.loads(x) for x in raw.splitlines()]
    assert len(lines) == 2
    ok, denied = lines
    assert ok["tenant"] == "eu-only" and ok["status"] == 200 and ok["jurisdiction"] == "EU"
    assert ok["region"] == "eu-west-1" and ok["pool"] == "eu-a" and ok["model"] == "m"
    assert ok["reason"] and ok["latency_ms"] > 0
    assert denied["status"] == 403 and denied["reason"] == "residency_denied"
    text = caplog.text + raw
    assert "secret prompt" not in text and KEYS["eu"] not in text and "hello" not in text
