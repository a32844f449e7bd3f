"""Admin targeting and the per-revision series through the proxy (fake engines)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from factory_router.app.revisions import RevisionMetrics
from factory_router.policy.fleet import Backend, Region, build_fleet
from factory_router.policy.policies import PolicyName
from factory_router.policy.tenants import hash_key
from tests.integration.router.processes import metric_sum
from tests.unit.router.router_testkit import (
    KEYS,
    TENANTS_DOC,
    auth,
    backend,
    engines,
    router,
    scrape,
)

NEW, OLD, BAD = "bbbbbbbbbb", "aaaaaaaaaa", "cccccccccc"
OPS_KEY = "sk-ops-admin-0001"
TENANTS: dict[str, Any] = {
    **TENANTS_DOC,
    "tenants": [
        *TENANTS_DOC["tenants"],
        {"name": "ops", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key(OPS_KEY)],
         "admin": True},
    ],
}  # fmt: skip
STREAM = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def revision_backend(engine: Any, revision: str) -> Backend:
    b = backend(engine, "eu", "eu-west-1")
    return replace(b, factory="llama", namespace="ml", revision=revision, pool_name="eu")


def series(text: str, name: str, revision: str, *more: str) -> float:
    return metric_sum(
        text,
        name,
        'namespace="ml"',
        'factory="llama"',
        'pool="eu"',
        f'revision="{revision}"',
        *more,
    )


async def test_targeting_is_for_admins_only_and_never_forwarded_nor_counted() -> None:
    async with (
        engines(1) as (old,),
        engines(1, chunk_delay=0.01) as (new,),
        engines(1, mode="fail") as (bad,),
    ):
        fleet = [revision_backend(old, OLD), revision_backend(new, NEW), revision_backend(bad, BAD)]
        async with router(fleet, tenants_doc=TENANTS) as r, httpx.AsyncClient(base_url=r.url) as c:
            ops = {"authorization": f"Bearer {OPS_KEY}"}
            for _ in range(3):
                reply = await c.post(
                    "/v1/chat/completions",
                    json=STREAM,
                    headers={**ops, "x-factory-target": f"ml/llama/eu@{NEW}"},
                )
                assert reply.status_code == 200 and reply.text.endswith("data: [DONE]\n\n")
            assert (new.total, old.total, bad.total) == (3, 0, 0)
            assert all("x-factory-target" not in h for h in new.headers_seen)
            # A tenant without admin: 403, whatever the value; nothing reaches an engine.
            for value in (f"ml/llama/eu@{NEW}", "not a target"):
                reply = await c.post(
                    "/v1/chat/completions",
                    json=STREAM,
                    headers={**auth("eu"), "x-factory-target": value},
                )
                assert reply.status_code == 403
                error = reply.json()["error"]
                assert (error["type"], error["code"]) == ("permission_error", "target_not_allowed")
            reply = await c.post(
                "/v1/chat/completions", json=STREAM, headers={**ops, "x-factory-target": "ml/x"}
            )
            assert (reply.status_code, reply.json()["error"]["code"]) == (400, "invalid_target")
            reply = await c.post(
                "/v1/chat/completions",
                json=STREAM,
                headers={**ops, "x-factory-target": "ml/llama/eu@dddddddddd"},
            )
            assert (reply.status_code, reply.json()["error"]["code"]) == (
                503,
                "no_compliant_backend",
            )
            # The failing revision: one attempt, an error.
            reply = await c.post(
                "/v1/chat/completions",
                json=STREAM,
                headers={**ops, "x-factory-target": f"ml/llama/eu@{BAD}"},
            )
            assert reply.status_code >= 500
            assert (new.total, old.total, bad.total) == (3, 0, 1)
            assert KEYS["eu"] not in str(new.headers_seen)
            text = await scrape(r)
    # Targeted requests are the operator's, not clients': in no revision's series.
    assert "factory_router_backend_attempts_total{" not in text
    assert "factory_router_backend_ttft_seconds_count{" not in text


def test_series_of_revisions_gone_from_the_fleet_are_removed_after_the_retention() -> None:
    registry = CollectorRegistry()
    metrics = RevisionMetrics(registry, retention_seconds=60)
    regions = [Region("eu-west-1", "EU")]
    a = Backend("a", "m", "p", "eu-west-1", "http://a", "f", "ns", revision=OLD)
    b = replace(a, id="b", url="http://b", revision=NEW)
    peer = replace(a, id="peer", via_endpoint=True)
    assert metrics.series(peer) is None  # the region's own router records those
    for x in (a, b):
        s = metrics.series(x)
        assert s is not None
        s.attempt(ok=True)
    metrics.prune(build_fleet(regions, [a]), now=0.0)
    assert f'revision="{NEW}"'.encode() in generate_latest(registry)
    metrics.prune(build_fleet(regions, [a]), now=59.0)
    assert f'revision="{NEW}"'.encode() in generate_latest(registry)
    metrics.prune(build_fleet(regions, [a]), now=60.0)
    text = generate_latest(registry)
    assert f'revision="{NEW}"'.encode() not in text and f'revision="{OLD}"'.encode() in text
    # Back in the fleet: a fresh series.
    s = metrics.series(b)
    assert s is not None
    s.attempt(ok=False)
    assert b'outcome="error"' in generate_latest(registry)


async def test_admin_targeted_requests_are_not_counted_in_the_revision_series() -> None:
    """The series are what clients saw, which the rollout gates compare: the operator's golden
    prompts (targeted, sent to the canary only unless similarToStable) must neither count
    towards a step's minRequests nor dilute the canary's error ratio."""
    async with engines(1, chunk_delay=0.01) as (new,):
        fleet = [revision_backend(new, NEW)]
        async with router(fleet, tenants_doc=TENANTS) as r, httpx.AsyncClient(base_url=r.url) as c:
            ops = {"authorization": f"Bearer {OPS_KEY}", "x-factory-target": f"ml/llama/eu@{NEW}"}
            for body in (STREAM, {**STREAM, "stream": False}):
                reply = await c.post("/v1/chat/completions", json=body, headers=ops)
                assert reply.status_code == 200
            for _ in range(3):
                reply = await c.post("/v1/chat/completions", json=STREAM, headers=auth("eu"))
                assert reply.status_code == 200 and reply.text.endswith("data: [DONE]\n\n")
            assert new.total == 5
            text = await scrape(r)
    attempts = "factory_router_backend_attempts_total"
    assert series(text, attempts, NEW, 'outcome="ok"') == 3  # the tenant's requests only
    assert series(text, attempts, NEW, 'outcome="error"') == 0
    assert series(text, "factory_router_backend_ttft_seconds_count", NEW) == 3
    # 5 content events per stream: 5 tokens (estimated: no usage chunk), 4 gaps each.
    assert series(text, "factory_router_backend_completion_tokens_total", NEW) == 15
    assert series(text, "factory_router_backend_itl_seconds_count", NEW) == 12
    # Chunks 10 ms apart: 4 gaps of about 10 ms per stream (more on a loaded machine).
    assert series(text, "factory_router_backend_stream_seconds_total", NEW) >= 0.1


async def test_an_error_failed_over_counts_on_the_revision_that_failed() -> None:
    async with engines(1) as (old,), engines(1, mode="fail") as (bad,):
        fleet = [revision_backend(old, OLD), revision_backend(bad, BAD)]
        rr = PolicyName.ROUND_ROBIN  # the failing revision comes first within two requests
        async with (
            router(fleet, tenants_doc=TENANTS, policy=rr) as r,
            httpx.AsyncClient(base_url=r.url) as c,
        ):
            for _ in range(2):
                reply = await c.post("/v1/chat/completions", json=STREAM, headers=auth("eu"))
                assert reply.status_code == 200  # failed over to the good revision
                if bad.total:
                    break
            assert bad.total == 1
            text = await scrape(r)
    attempts = "factory_router_backend_attempts_total"
    assert series(text, attempts, BAD, 'outcome="error"') == 1
    assert series(text, attempts, BAD, 'outcome="ok"') == 0
    assert series(text, attempts, OLD, 'outcome="ok"') == old.total
    assert series(text, attempts, OLD, 'outcome="error"') == 0
