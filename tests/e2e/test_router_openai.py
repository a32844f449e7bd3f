"""The router of the local fleet through the official `openai` client, tenant by tenant.

Every check of residency reads the simulated engines' own request counters
(`factory_sim_requests_total` on each engine's /metrics, found through its region's
`factory-sim` control API): the router's answer headers are what it claims, the counters
are what really happened.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from factoryctl.components.engines import control_url
from factoryctl.fleet import FleetContext
from factoryctl.home import FleetHome
from factoryctl.topology import load_topology
from tests.e2e.conftest import Fleet
from tests.support.waiting import wait_until

LLAMA = "llama-3.1-8b-instruct"  # EU only (eu-west-1, eu-central-1)
QWEN = "qwen2.5-7b-instruct"  # US and IN (us-east-1, ap-south-1)
MODELS = {"eu-only": {LLAMA}, "us-only": {QWEN}, "in-only": {QWEN}, "global": {LLAMA, QWEN}}
TENANTS = sorted(MODELS)
# Served by the real vLLM pool in eu-west-1 (EU; tests/e2e/test_real_engine.py), which has no
# simulator counters: listed, but not part of the counted requests below.
REAL_MODEL = "tiny-llama"
LISTED = {name: models | ({REAL_MODEL} if name in {"eu-only", "global"} else set())
          for name, models in MODELS.items()}  # fmt: skip
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the fleet."}]


def region_jurisdictions() -> dict[str, str]:
    return {r.name: r.jurisdiction for r in load_topology().regions}


def engine_requests(fleet: Fleet) -> dict[str, float]:
    """Requests each region's simulated engines received, from their own counters.

    A region whose simulator process is down is absent from the answer.
    """
    ctx = FleetContext(FleetHome(fleet.home), load_topology(), lambda _: None)
    counts: dict[str, float] = {}
    with httpx.Client(timeout=5) as http:
        for region in region_jurisdictions():
            try:
                engines = http.get(f"{control_url(ctx, region)}/engines").json()["engines"]
            except httpx.TransportError:
                continue
            total = 0.0
            for engine in engines:
                text = http.get(f"{engine['url']}/metrics").text
                for family in text_string_to_metric_families(text):
                    if family.name == "factory_sim_requests":
                        total += sum(s.value for s in family.samples if s.name.endswith("_total"))
            counts[region] = total
    return counts


def settled_engine_requests(fleet: Fleet) -> dict[str, float]:
    """`engine_requests`, read again when an engine stopped between being listed and being
    read (a pool scaling down or going back to zero drains and stops its engines)."""

    def read() -> dict[str, float] | None:
        try:
            return engine_requests(fleet)
        except httpx.TransportError:
            return None

    counts = wait_until(read, 30, interval=0.5, what="every region's engine counters")
    assert counts is not None
    return counts


def assert_stayed_inside(
    before: dict[str, float], after: dict[str, float], allowed: set[str]
) -> None:
    """No engine outside `allowed` jurisdictions counted a request between the two reads."""
    for region, jurisdiction in region_jurisdictions().items():
        if jurisdiction not in allowed:
            assert region in after, f"cannot read the counters of {region}"
            assert after[region] == before[region], (
                f"{region} ({jurisdiction}) received {after[region] - before[region]:.0f} "
                f"requests from a tenant allowed only {sorted(allowed)}"
            )


def tenant(fleet: Fleet, name: str) -> tuple[str, set[str]]:
    info = fleet.env["tenants"][name]
    return info["api_key"], set(info["jurisdictions"])


def test_env_prints_the_router_and_the_demo_tenants(fleet: Fleet) -> None:
    env = fleet.env
    for key in ("kubeconfig", "prometheus_url", "router_url", "router_admin_url", "admin_key",
                "tenants"):  # fmt: skip
        assert env[key], key
    assert {n: set(t["jurisdictions"]) for n, t in env["tenants"].items()} == {
        "eu-only": {"EU"},
        "us-only": {"US"},
        "in-only": {"IN"},
        "global": {"EU", "US", "IN"},
    }
    keys = [t["api_key"] for t in env["tenants"].values()] + [env["admin_key"]]
    assert len(set(keys)) == len(keys)
    tenants_file = (fleet.home / "router" / "tenants.yaml").read_text()
    assert not any(k in tenants_file for k in keys), "plaintext key in the tenants file"
    ready = httpx.get(f"{env['router_admin_url']}/readyz", timeout=5).json()
    assert ready["status"] == "ok" and ready["backends"] >= 9, ready
    # The tenants' port: the API and a bare readiness, nothing of the configuration.
    bare = httpx.get(f"{env['router_url']}/readyz", timeout=5)
    assert bare.status_code == 200 and bare.json() == {"status": "ok"}
    for path in ("/metrics", "/admin/explain"):
        assert httpx.get(f"{env['router_url']}{path}", timeout=5).status_code == 404, path
    scraped = httpx.get(f"{env['prometheus_url']}/api/v1/targets", timeout=5).json()
    router_targets = [
        t for t in scraped["data"]["activeTargets"] if t["labels"]["job"] == "factory-router"
    ]
    assert [t["scrapeUrl"] for t in router_targets] == [f"{env['router_admin_url']}/metrics"]


@pytest.mark.parametrize("name", TENANTS)
def test_sync_client_streaming_and_not(fleet: Fleet, name: str) -> None:
    key, allowed = tenant(fleet, name)
    before = engine_requests(fleet)
    with openai.OpenAI(
        base_url=f"{fleet.env['router_url']}/v1", api_key=key, max_retries=0, timeout=30
    ) as client:
        for model in sorted(MODELS[name]):
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=MESSAGES, max_tokens=8
            )
            assert raw.headers["x-factory-jurisdiction"] in allowed
            assert raw.headers["x-request-id"]
            chat = raw.parse()
            assert chat.model == model and chat.choices[0].message.content

            stream = client.chat.completions.create(
                model=model,
                messages=MESSAGES,
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens

            completion = client.completions.create(model=model, prompt="Once upon", max_tokens=6)
            assert completion.choices[0].text
            streamed = "".join(
                c.choices[0].text
                for c in client.completions.create(
                    model=model, prompt="Once upon", max_tokens=6, stream=True
                )
                if c.choices
            )
            assert streamed

            embedding = client.embeddings.create(model=model, input="residency")
            assert len(embedding.data[0].embedding) > 0
    after = engine_requests(fleet)
    assert sum(after.values()) - sum(before.values()) == 5 * len(MODELS[name])
    assert_stayed_inside(before, after, allowed)


@pytest.mark.parametrize("name", TENANTS)
async def test_async_client_streaming_and_not(fleet: Fleet, name: str) -> None:
    key, allowed = tenant(fleet, name)
    before = await asyncio.to_thread(engine_requests, fleet)
    async with openai.AsyncOpenAI(
        base_url=f"{fleet.env['router_url']}/v1", api_key=key, max_retries=0, timeout=30
    ) as client:

        async def plain(model: str) -> str:
            chat = await client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=8
            )
            return chat.choices[0].message.content or ""

        async def streamed(model: str) -> str:
            stream = await client.chat.completions.create(
                model=model, messages=MESSAGES, max_tokens=8, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        jobs = [f(m) for m in sorted(MODELS[name]) for f in (plain, streamed) for _ in range(4)]
        texts = await asyncio.gather(*jobs)
    assert all(texts)
    after = await asyncio.to_thread(engine_requests, fleet)
    assert sum(after.values()) - sum(before.values()) == len(jobs)
    assert_stayed_inside(before, after, allowed)


@pytest.mark.parametrize("name", TENANTS)
def test_models_lists_only_what_the_tenant_may_use(fleet: Fleet, name: str) -> None:
    key, _ = tenant(fleet, name)
    with openai.OpenAI(
        base_url=f"{fleet.env['router_url']}/v1", api_key=key, max_retries=0, timeout=30
    ) as client:
        assert {m.id for m in client.models.list()} == LISTED[name]


@pytest.mark.parametrize(("name", "model"), [("eu-only", QWEN), ("us-only", LLAMA),
                                             ("in-only", LLAMA)])  # fmt: skip
def test_model_served_only_elsewhere_is_404_and_reaches_no_engine(
    fleet: Fleet, name: str, model: str
) -> None:
    key, _ = tenant(fleet, name)
    before = engine_requests(fleet)
    with openai.OpenAI(
        base_url=f"{fleet.env['router_url']}/v1", api_key=key, max_retries=0, timeout=30
    ) as client:
        for stream in (False, True):
            with pytest.raises(openai.NotFoundError) as caught:
                client.chat.completions.create(
                    model=model, messages=MESSAGES, max_tokens=8, stream=stream
                )
            assert caught.value.code == "model_not_found"
            assert caught.value.response.headers["x-factory-pool"] == "none"
    assert engine_requests(fleet) == before
