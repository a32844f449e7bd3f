"""Adversarial residency cases. Each asserts, from the upstreams' own request counters,
that nothing reached a backend outside the allowed jurisdictions (or without a known
region/jurisdiction), whatever the router answered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from factory_router.app.server import RouterServer
from factory_router.policy.config import RouterConfig, Timeouts
from factory_router.policy.fleet import Region
from tests.unit.router.router_testkit import (
    KEYS,
    REGIONS,
    FakeEngine,
    auth,
    backend,
    engines,
    router,
    scrape,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "personal data"}]}


@dataclass
class Fleet:
    router: RouterServer
    client: httpx.AsyncClient
    e: dict[str, FakeEngine]

    def reached(self, *names: str) -> int:
        return sum(self.e[n].total for n in names)

    async def chat(
        self, who: str, body: dict[str, Any] | None = None, **headers: str
    ) -> httpx.Response:
        hdrs = {**auth(who), **{k.replace("_", "-"): v for k, v in headers.items()}}
        return await self.client.post("/v1/chat/completions", json=body or CHAT, headers=hdrs)


OUTSIDE_EU = ("us", "uk", "noregion", "unknown", "nojur")


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    names = ["eu1", "eu2", "us", "uk", "noregion", "unknown", "nojur"]
    async with engines(len(names)) as started:
        e = dict(zip(names, started, strict=True))
        backends = [
            backend(e["eu1"], "eu-a", "eu-west-1"),
            backend(e["eu2"], "eu-b", "eu-central-1"),
            backend(e["us"], "us-a", "us-east-1"),
            backend(e["us"], "us-a", "us-east-1", model="us-only"),
            backend(e["uk"], "uk-a", "uk-south-1"),
            backend(e["noregion"], "nr", None),
            backend(e["noregion"], "nr", None, model="orphan"),
            backend(e["unknown"], "unk", "mars-1"),
            backend(e["unknown"], "unk", "mars-1", model="orphan"),
            backend(e["nojur"], "nj", "nowhere-1"),
            backend(e["nojur"], "nj", "nowhere-1", model="orphan"),
        ]
        regions = [*REGIONS, Region("nowhere-1", None)]
        # No RTT probes: the order of the EU candidates is then the configured one
        # (eu-west-1 local, eu-central-1 at the default RTT), not a race between two
        # probes of 1 ms that decides which one a failover test sees fail first.
        config = RouterConfig(timeouts=Timeouts(first_byte=5.0, grace_period=2.0), probe_interval=0)
        async with (
            router(backends, regions=regions, config=config) as r,
            httpx.AsyncClient(base_url=r.url, timeout=10) as client,
        ):
            yield Fleet(r, client, e)


async def test_01_header_cannot_widen(fleet: Fleet) -> None:
    for _ in range(10):
        resp = await fleet.chat("eu", x_factory_residency="EU,US,UK")
        assert resp.status_code == 200 and resp.headers["x-factory-jurisdiction"] == "EU"
    assert fleet.reached(*OUTSIDE_EU) == 0


async def test_02_header_to_foreign_jurisdiction_is_403(fleet: Fleet) -> None:
    resp = await fleet.chat("eu", x_factory_residency="us")
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "residency_denied"
    assert fleet.reached(*fleet.e) == 0


@pytest.mark.parametrize("header", ["*", "EU,*", "ZZ", "EU;US", "EU,,US"])
async def test_03_wildcard_unknown_or_malformed_header_is_400(fleet: Fleet, header: str) -> None:
    resp = await fleet.chat("global", x_factory_residency=header)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_residency"
    assert fleet.reached(*fleet.e) == 0


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer sk-unknown", f"Basic {KEYS['eu']}"]
)
async def test_04_unknown_or_missing_tenant_is_401(fleet: Fleet, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    resp = await fleet.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status_code == 401
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    models = await fleet.client.get("/v1/models", headers=headers)
    assert models.status_code == 401
    assert fleet.reached(*fleet.e) == 0


async def test_05_backends_without_region_or_unknown_region_are_never_used(
    fleet: Fleet,
) -> None:
    for who in ("eu", "us", "global"):
        resp = await fleet.chat(who, {"model": "orphan", "messages": []})
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    # Even when every regular backend is down, they are not a fallback.
    for name in ("eu1", "eu2", "us", "uk"):
        fleet.e[name].mode = "fail"
    resp = await fleet.chat("global")
    assert resp.status_code in (502, 503)  # 502 once the attempt limit (3 of 4) is reached
    assert fleet.reached("noregion", "unknown", "nojur") == 0


async def test_06_every_compliant_backend_down_is_503_not_elsewhere(fleet: Fleet) -> None:
    fleet.e["eu1"].mode = "fail"
    await fleet.e["eu2"].stop()  # connection refused
    for _ in range(5):
        resp = await fleet.chat("eu")
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "no_compliant_backend"
    assert fleet.reached(*OUTSIDE_EU) == 0


async def test_07_failover_stays_in_jurisdiction(fleet: Fleet) -> None:
    fleet.e["eu1"].mode = "fail"
    resp = await fleet.chat("eu")
    assert resp.status_code == 200 and resp.headers["x-factory-pool"] == "eu-b"
    assert fleet.e["eu1"].total == 1 and fleet.e["eu2"].total == 1
    assert fleet.reached(*OUTSIDE_EU) == 0


async def test_08_failover_when_only_other_healthy_backends_are_foreign(fleet: Fleet) -> None:
    fleet.e["eu1"].mode = "fail"
    fleet.e["eu2"].mode = "fail"
    # The global tenant narrowed to EU: US and UK are healthy but not allowed.
    resp = await fleet.chat("global", x_factory_residency="eu")
    assert resp.status_code == 503
    assert fleet.e["eu1"].total + fleet.e["eu2"].total >= 1
    assert fleet.reached(*OUTSIDE_EU) == 0


async def test_09_redirects_are_not_followed(fleet: Fleet) -> None:
    for name in ("eu1", "eu2"):
        fleet.e[name].mode = "redirect"
        fleet.e[name].redirect_to = fleet.e["us"].url
    resp = await fleet.chat("eu")
    assert resp.status_code == 503 and "location" not in resp.headers
    fleet.e["eu2"].mode = "ok"
    ok = await fleet.chat("eu")
    assert ok.status_code == 200 and ok.headers["x-factory-pool"] == "eu-b"
    assert fleet.reached(*OUTSIDE_EU) == 0


async def test_10_model_only_served_elsewhere_is_404_without_revealing(fleet: Fleet) -> None:
    resp = await fleet.chat("eu", {"model": "us-only", "messages": []})
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert err["code"] == "model_not_found" and "us" not in err["message"].replace("us-only", "")
    models = await fleet.client.get("/v1/models", headers=auth("eu"))
    assert [m["id"] for m in models.json()["data"]] == ["m"]
    gmodels = await fleet.client.get("/v1/models", headers=auth("global"))
    assert [m["id"] for m in gmodels.json()["data"]] == ["m", "us-only"]
    assert fleet.reached(*fleet.e) == 0


async def test_11_client_region_header_does_not_affect_compliance(fleet: Fleet) -> None:
    for region in ("us-east-1", "uk-south-1", "mars-1"):
        resp = await fleet.chat("eu", x_factory_client_region=region)
        assert resp.status_code == 200 and resp.headers["x-factory-jurisdiction"] == "EU"
    assert fleet.reached(*OUTSIDE_EU) == 0


async def test_12_us_tenant_never_reaches_eu(fleet: Fleet) -> None:
    fleet.e["us"].mode = "fail"
    resp = await fleet.chat("us")
    assert resp.status_code == 503
    assert fleet.reached("eu1", "eu2", "uk", "noregion", "unknown", "nojur") == 0


async def test_13_case_and_spaces_in_header_narrow_correctly(fleet: Fleet) -> None:
    resp = await fleet.chat("global", x_factory_residency="u k")
    assert resp.status_code == 200 and resp.headers["x-factory-pool"] == "uk-a"
    assert fleet.reached("eu1", "eu2", "us", "noregion", "unknown", "nojur") == 0


async def test_14_ejected_compliant_backends_give_503_without_trying_others(
    fleet: Fleet,
) -> None:
    fleet.e["eu1"].mode = fleet.e["eu2"].mode = "fail"
    for _ in range(4):
        await fleet.chat("eu")
    tried = fleet.e["eu1"].total + fleet.e["eu2"].total
    resp = await fleet.chat("eu")  # both ejected now: refused before any attempt
    assert resp.status_code == 503
    assert fleet.e["eu1"].total + fleet.e["eu2"].total == tried
    assert fleet.reached(*OUTSIDE_EU) == 0
    metrics = await scrape(fleet.router)
    assert 'factory_router_residency_denials_total{reason="no_compliant_backend"}' in metrics
