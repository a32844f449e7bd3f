"""Scale to zero and back on the whole local fleet, through the router (issue 17, item 3).

A factory of the test's own (its own namespace and model) has an EU pool `dub` (eu-west-1)
and a US pool `iad` (us-east-1), both `replicas: {min: 0, max: 2}`, autoscaled: idle, both run
nothing. The eu-only tenant's requests go through the fleet's router; the operator decides
every 5 s from the fleet's Prometheus, which scrapes the router's admin listener every second.
Shown here:

- the first request to the idle model is held by the router, counted on `dub` in
  `factory_router_pending_requests`, which the operator reads to scale `dub` from zero; it is
  answered once `dub` is Ready (the added latency against a warm request is printed);
- `dub` goes back to zero after its idle window (`scaleDown.idleSeconds`); then concurrent
  first requests are all held and all served;
- a second factory whose only pool cannot be scheduled (a node selector no node matches):
  its requests get 503 `scaling_from_zero` with `Retry-After` within the hold's bound (the
  client narrows the router's with `x-factory-hold-timeout`), while the operator did try to
  wake the pool;
- not one request reaches an engine outside the EU (the engines' own counters), and the US
  pool, which the eu-only tenant may not use, is never woken.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Fleet
from tests.e2e.test_router_openai import assert_stayed_inside, settled_engine_requests
from tests.support.waiting import wait_until

NAMESPACE = "e2e-scale-zero"
FACTORY, MODEL = "zero-probe", "zero-probe-8b"
GHOST, GHOST_MODEL = "zero-ghost", "zero-ghost-8b"
# Windows for a test, in the local fleet's seconds (its engines start in seconds).
IDLE_S = 10
AUTOSCALING: dict[str, Any] = {
    "expectedStartupSeconds": 5,
    "scaleUp": {"stabilizationSeconds": 0},
    "scaleDown": {"stabilizationSeconds": 5, "cooldownSeconds": 5, "idleSeconds": IDLE_S},
}
# Generous bounds for a loaded 2-core machine; the added latency is measured and printed.
SETTLE_S = 120.0
HELD_CLIENT_TIMEOUT_S = 150.0  # longer than the router's hold (120 s): the router answers first
BACK_TO_ZERO_S = 120.0
CONCURRENT = 6
GHOST_HOLD_S = 15.0  # the client's x-factory-hold-timeout for the pool that cannot start
GHOST_SLACK_S = 10.0  # the 503 comes within the hold plus this
PENDING = "factory_router_pending_requests"
MESSAGES = [{"role": "user", "content": "Wake up."}]


def _pool(name: str, region: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "region": region,
        "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
        "replicas": {"min": 0, "max": 2},
        **extra,
    }


def _factory(name: str, model: str, pools: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "inference.factory.dev/v1alpha1",
        "kind": "InferenceFactory",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": model, "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": {"args": {"maxModelLen": 4096, "maxNumSeqs": 8}},
            "residency": {"jurisdictions": ["EU", "US"]},
            "autoscaling": AUTOSCALING,
            "pools": pools,
        },
    }


def _json(fleet: Fleet, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(fleet.cluster.kubectl(*args, "-o", "json"))
    return found


def _deployments(fleet: Fleet, factory: str) -> dict[str, dict[str, Any]]:
    items = _json(
        fleet,
        "get",
        "deployments",
        "-n",
        NAMESPACE,
        "-l",
        f"inference.factory.dev/factory={factory}",
    )["items"]
    return {d["metadata"]["labels"]["inference.factory.dev/pool"]: d for d in items}


def _at_zero(fleet: Fleet, factory: str, pools: set[str]) -> bool:
    """Every pool's Deployment asks for no replica and runs none."""
    deployments = _deployments(fleet, factory)
    if set(deployments) != pools:
        return False
    return all(
        d["spec"].get("replicas") == 0 and not d.get("status", {}).get("replicas")
        for d in deployments.values()
    )


def _asked(fleet: Fleet, factory: str, pool: str) -> int:
    dep = _deployments(fleet, factory).get(pool)
    return int(dep["spec"].get("replicas", 0)) if dep else 0


def _chat(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 4, "messages": MESSAGES}


def _headers(key: str, hold: float | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {key}"}
    if hold is not None:
        headers["x-factory-hold-timeout"] = f"{hold:g}"
    return headers


def _holds_for(url: str, key: str, model: str) -> bool:
    """The router knows the model's pools at zero: with no time to wait (hold timeout 0) it
    answers 503 scaling_from_zero, not 404 (a model it has not discovered yet)."""
    answer = httpx.post(
        f"{url}/v1/chat/completions", json=_chat(model), headers=_headers(key, 0), timeout=10
    )
    return answer.status_code == 503 and answer.json()["error"]["code"] == "scaling_from_zero"


async def _timed(
    client: httpx.AsyncClient, url: str, key: str, model: str, hold: float | None = None
) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = await client.post(
        f"{url}/v1/chat/completions", json=_chat(model), headers=_headers(key, hold)
    )
    return answer, time.monotonic() - started


async def _burst(
    url: str, key: str, model: str, n: int, hold: float | None = None
) -> list[tuple[httpx.Response, float]]:
    async with httpx.AsyncClient(timeout=HELD_CLIENT_TIMEOUT_S) as client:
        return await asyncio.gather(*(_timed(client, url, key, model, hold) for _ in range(n)))


def _pending_series(fleet: Fleet) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{fleet.env['prometheus_url']}/api/v1/query",
        params={"query": f"max_over_time({PENDING}{{namespace={NAMESPACE!r}}}[10m])"},
        timeout=10,
    ).json()
    series: list[dict[str, Any]] = answer["data"]["result"]
    return series


def _why(fleet: Fleet, answers: list[tuple[httpx.Response, float]]) -> str:
    """What the router and the engines agent said about the test's model (failure message)."""
    said = [f"{a.status_code} {a.headers.get('x-factory-pool')} {a.text[:200]}" for a, _ in answers]
    for path in sorted((fleet.home / "logs").glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        mine = [line for line in lines if FACTORY in line or MODEL in line]
        said += [f"{path.stem}: {line[:400]}" for line in mine[-30:]]
    return "\n".join(said)


@pytest.fixture(scope="module")
def idle(fleet: Fleet) -> Iterator[Fleet]:
    """The test's factories in their own namespace, applied and settled at zero."""
    fleet.cluster.kubectl("create", "namespace", NAMESPACE)
    try:
        docs = [
            _factory(FACTORY, MODEL, [_pool("dub", "eu-west-1"), _pool("iad", "us-east-1")]),
            _factory(
                GHOST,
                GHOST_MODEL,
                [_pool("ghost", "eu-west-1", nodeSelector={"inference.factory.dev/nowhere": "x"})],
            ),
        ]
        for doc in docs:
            fleet.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(doc))
        yield fleet
    finally:
        for name in (FACTORY, GHOST):
            # kubectl's own --timeout, within the subprocess's (the operator removes the
            # children first, which takes a while on a loaded machine).
            fleet.cluster.kubectl(
                "delete", "inferencefactory", name, "-n", NAMESPACE,
                "--ignore-not-found", "--timeout=120s", check=False, timeout=150,
            )  # fmt: skip
        fleet.cluster.kubectl(
            "delete", "namespace", NAMESPACE, "--timeout=120s", check=False, timeout=150
        )


def test_an_idle_model_is_woken_by_held_requests_and_goes_back_to_zero(idle: Fleet) -> None:
    fleet = idle
    url, key = fleet.env["router_url"], fleet.env["tenants"]["eu-only"]["api_key"]
    wait_until(lambda: _at_zero(fleet, FACTORY, {"dub", "iad"}), SETTLE_S, interval=0.5,
               what="both pools created at zero")  # fmt: skip
    wait_until(lambda: _holds_for(url, key, MODEL), SETTLE_S, interval=0.5,
               what="the router to know the model's pools at zero")  # fmt: skip
    before = settled_engine_requests(fleet)

    # The first request: held until dub is Ready, then served there.
    [(first, cold_s)] = asyncio.run(_burst(url, key, MODEL, 1))
    assert first.status_code == 200, first.text
    assert first.headers["x-factory-jurisdiction"] == "EU"
    assert first.headers["x-factory-pool"] == f"{FACTORY}-dub"
    [(warm, warm_s)] = asyncio.run(_burst(url, key, MODEL, 1))
    assert warm.status_code == 200, warm.text
    print(f"\nscale from zero: first request {cold_s:.2f} s, warm {warm_s:.3f} s, "
          f"added by the cold start {cold_s - warm_s:.2f} s")  # fmt: skip
    pending = [s["metric"] for s in _pending_series(fleet) if s["metric"]["factory"] == FACTORY]
    assert pending and all(m["pool"] == "dub" and m["jurisdiction"] == "EU" for m in pending), (
        pending
    )

    # Idle: back to zero after the idle window; the router sees no replica left.
    idle_from = time.monotonic()
    wait_until(lambda: _at_zero(fleet, FACTORY, {"dub", "iad"}), BACK_TO_ZERO_S, interval=0.5,
               what="dub back to zero after its idle window")  # fmt: skip
    wait_until(lambda: _holds_for(url, key, MODEL), 60, interval=0.5,
               what="the router to see dub at zero")  # fmt: skip
    print(f"back to zero {time.monotonic() - idle_from:.1f} s after the last request "
          f"(idleSeconds {IDLE_S})")  # fmt: skip

    # Concurrent first requests: all held, all served.
    answers = asyncio.run(_burst(url, key, MODEL, CONCURRENT))
    assert [a.status_code for a, _ in answers] == [200] * CONCURRENT, _why(fleet, answers)
    assert {a.headers["x-factory-pool"] for a, _ in answers} == {f"{FACTORY}-dub"}
    print(f"{CONCURRENT} concurrent first requests: "
          f"{', '.join(f'{s:.2f}' for _, s in answers)} s")  # fmt: skip

    # The US pool, outside the tenant's jurisdiction, was never woken; no request left the EU.
    assert _asked(fleet, FACTORY, "iad") == 0
    assert_stayed_inside(before, settled_engine_requests(fleet), {"EU"})


def test_a_pool_that_cannot_start_gets_503_with_retry_after_within_the_bound(idle: Fleet) -> None:
    fleet = idle
    url, key = fleet.env["router_url"], fleet.env["tenants"]["eu-only"]["api_key"]
    wait_until(lambda: _at_zero(fleet, GHOST, {"ghost"}), SETTLE_S, interval=0.5,
               what="the ghost pool created at zero")  # fmt: skip
    wait_until(lambda: _holds_for(url, key, GHOST_MODEL), SETTLE_S, interval=0.5,
               what="the router to know the ghost pool")  # fmt: skip
    before = settled_engine_requests(fleet)

    answers = asyncio.run(_burst(url, key, GHOST_MODEL, 3, hold=GHOST_HOLD_S))
    for answer, seconds in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "scaling_from_zero"
        assert int(answer.headers["retry-after"]) > 0
        assert GHOST_HOLD_S - 1 <= seconds <= GHOST_HOLD_S + GHOST_SLACK_S, seconds
    retry_after = answers[0][0].headers["retry-after"]
    print(f"\nunschedulable pool: 503 after {', '.join(f'{s:.2f}' for _, s in answers)} s "
          f"(hold {GHOST_HOLD_S:g} s), Retry-After {retry_after}")  # fmt: skip
    # The operator did try: the held demand asked the pool for a replica, which never ran.
    wait_until(lambda: _asked(fleet, GHOST, "ghost") >= 1, 30, interval=0.5,
               what="the operator to scale the ghost pool from zero")  # fmt: skip
    ready = _deployments(fleet, GHOST)["ghost"].get("status", {}).get("readyReplicas")
    assert not ready
    assert_stayed_inside(before, settled_engine_requests(fleet), {"EU"})
