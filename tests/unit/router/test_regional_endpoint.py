"""One cluster per region: a region reached through its FleetRegion's `spec.endpoint`, where
another factory-router runs. The front router presents its endpoint key there and pins the
request to that region's jurisdiction; engines never see either."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest

from factory_router.app.logs import AccessLog
from factory_router.policy.errors import PolicyError
from factory_router.policy.fleet import Backend
from factory_router.policy.tenants import hash_key, load_endpoint_key
from tests.unit.router.router_testkit import TENANTS_DOC, auth, backend, engines, router

ENDPOINT_KEY = "ek-front-eu-west-1-0123456789abcdef"
# The US region's router knows the front router as a tenant allowed EU and US data: the
# request's own limits arrive with it, as a residency header it can only narrow.
REGIONAL_TENANTS = {
    **TENANTS_DOC,
    "tenants": [
        *TENANTS_DOC["tenants"],
        {"name": "front-eu-west-1", "jurisdictions": ["EU", "US"],
         "api_keys_sha256": [hash_key(ENDPOINT_KEY)]},
    ],
}  # fmt: skip
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def via_endpoint(url: str) -> Backend:
    return Backend(id="region:us-east-1/m", model="m", pool="us-pool", region="us-east-1",
                   url=url, via_endpoint=True)  # fmt: skip


def access_lines(log: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(x) for x in log.getvalue().splitlines()]


async def test_the_front_router_is_a_tenant_of_the_regional_router() -> None:
    regional_log = io.BytesIO()
    async with (
        engines(2) as (us, eu_there),
        router(
            # The regional router could also reach an EU engine, nearer to the client:
            # the pinned jurisdiction keeps the request in the US region it was sent to.
            [backend(us, "us-pool", "us-east-1"), backend(eu_there, "eu-x", "eu-west-1")],
            region="us-east-1",
            tenants_doc=REGIONAL_TENANTS,
            access_log=AccessLog(regional_log),
        ) as regional,
        router([via_endpoint(regional.url)]) as front,
    ):
        front.state.endpoint_key = ENDPOINT_KEY
        async with httpx.AsyncClient(base_url=front.url) as c:
            resp = await c.post("/v1/chat/completions", json=CHAT, headers=auth("global"))
        regional.state.access_log.flush()
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-factory-region"] == "us-east-1"
    assert (us.total, eu_there.total) == (1, 0)
    (line,) = access_lines(regional_log)
    assert line["tenant"] == "front-eu-west-1" and line["region"] == "us-east-1"
    seen = us.headers_seen[0]
    assert "authorization" not in seen and "x-factory-residency" not in seen
    assert seen["x-request-id"] == resp.headers["x-request-id"]  # one id across both hops


async def test_without_the_endpoint_key_the_client_sees_no_401_and_nothing_is_sent() -> None:
    async with (
        engines(1) as (us,),
        router(
            [backend(us, "us-pool", "us-east-1")],
            region="us-east-1",
            tenants_doc=REGIONAL_TENANTS,
        ) as regional,
        router([via_endpoint(regional.url)]) as front,
        httpx.AsyncClient(base_url=front.url) as c,
    ):
        resp = await c.post("/v1/chat/completions", json=CHAT, headers=auth("global"))
    # The client's key was good: the regional router's refusal of the front router is
    # the fleet's fault, a failed backend, not an authentication error of the client.
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "no_compliant_backend"
    assert us.total == 0


async def test_engines_never_receive_the_endpoint_key() -> None:
    async with (
        engines(1) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1"), via_endpoint("http://127.0.0.1:9")]) as r,
        httpx.AsyncClient(base_url=r.url) as c,
    ):
        r.state.endpoint_key = ENDPOINT_KEY
        for _ in range(3):
            resp = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
            assert resp.status_code == 200
    assert eu.total == 3
    for seen in eu.headers_seen:
        assert "authorization" not in seen
        assert ENDPOINT_KEY not in json.dumps(dict(seen))


def test_endpoint_key_file_must_hold_one_plausible_token(tmp_path: Path) -> None:
    good = tmp_path / "key"
    good.write_text(ENDPOINT_KEY + "\n")
    assert load_endpoint_key(good) == ENDPOINT_KEY
    for text in ("", "   \n", "short", "two tokens-0123456789abcdef", "tab\tinside-0123456789"):
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(PolicyError):
            load_endpoint_key(bad)
    with pytest.raises(PolicyError, match="cannot read"):
        load_endpoint_key(tmp_path / "missing")
