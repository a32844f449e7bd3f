"""A factory scaled down and rolled while requests flow through the router: none dropped.

Issue 18: an engine-args change to a two-pool factory under about 7 requests/s answered 12
of 41 requests with 503 no_compliant_backend, because the local fleet's pods were Ready
before an engine stood behind them and a one-replica pool rolled with maxSurge 0. Here the
factory's pools have one replica each during the roll (their spec allows one more) and
their engines take seconds to load (`FACTORY_SIM_BEHAVIOUR=load_s=...`), so a pod that
were Ready before its engine answers, or a pool left without a serving replica, would drop
requests. Counted twice: from the client (every stream complete, finish_reason stop or
length) and from the engines' own counters (requests received and finished, including
the engines that the roll retired).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from factoryctl.components.engines import control_url
from factoryctl.fleet import FleetContext
from factoryctl.home import FleetHome
from factoryctl.topology import load_topology
from tests.e2e.conftest import Fleet
from tests.support.waiting import wait_until

FACTORY, NAMESPACE, MODEL = "rollout-probe", "inference", "rollout-probe-8b"
POOLS = {"h100-dub": "eu-west-1", "h100-fra": "eu-central-1"}
REVISION = "inference.factory.dev/revision"
RATE, DURATION = 7.0, 50.0  # requests/s, seconds
LOAD_SECONDS = 3  # each engine "loads its model" this long before /health answers
TIMEOUT = httpx.Timeout(60.0, connect=5.0)


def _factory_doc() -> dict[str, Any]:
    return {
        "apiVersion": "inference.factory.dev/v1alpha1",
        "kind": "InferenceFactory",
        "metadata": {"name": FACTORY, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": MODEL, "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": {
                "args": {"maxModelLen": 4096, "maxNumSeqs": 32},
                "env": [{"name": "FACTORY_SIM_BEHAVIOUR", "value": f"load_s={LOAD_SECONDS}"}],
            },
            "residency": {"jurisdictions": ["EU"]},
            "pools": [
                {
                    "name": "h100-dub",
                    "region": "eu-west-1",
                    "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
                    "replicas": {"min": 2, "max": 3},
                },
                {
                    "name": "h100-fra",
                    "region": "eu-central-1",
                    "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
                    "replicas": {"min": 1, "max": 2},
                },
            ],
        },
    }


def _json(fleet: Fleet, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(fleet.cluster.kubectl(*args, "-o", "json"))
    return found


def _deployments(fleet: Fleet) -> dict[str, dict[str, Any]]:
    items = _json(fleet, "get", "deployments", "-n", NAMESPACE,
                  "-l", f"inference.factory.dev/factory={FACTORY}")["items"]  # fmt: skip
    return {d["metadata"]["labels"]["inference.factory.dev/pool"]: d for d in items}


def _settled(fleet: Fleet, replicas: dict[str, int], old: dict[str, str]) -> bool:
    """Every pool runs `replicas` pods, all of a revision other than `old`'s, all Ready."""
    deployments = _deployments(fleet)
    if set(deployments) != set(POOLS):
        return False
    for pool, dep in deployments.items():
        status = dep.get("status", {})
        if not (
            status.get("observedGeneration") == dep["metadata"]["generation"]
            and status.get("replicas") == replicas[pool]
            and status.get("updatedReplicas") == replicas[pool]
            and status.get("readyReplicas") == replicas[pool]
            and dep["spec"]["template"]["metadata"]["labels"][REVISION] != old.get(pool)
        ):
            return False
    return True


def _revisions(fleet: Fleet) -> dict[str, str]:
    return {p: d["spec"]["template"]["metadata"]["labels"][REVISION]
            for p, d in _deployments(fleet).items()}  # fmt: skip


def _patch(fleet: Fleet, spec: dict[str, Any]) -> None:
    fleet.cluster.kubectl("patch", "inferencefactory", FACTORY, "-n", NAMESPACE,
                          "--type=merge", "-p", json.dumps({"spec": spec}))  # fmt: skip


def _engine_totals(fleet: Fleet) -> Counter[str]:
    """Requests received and finished (by reason) by every engine of the factory, running
    or retired, from the simulators' control APIs."""
    ctx = FleetContext(FleetHome(fleet.home), load_topology(), lambda _: None)
    totals: Counter[str] = Counter()
    with httpx.Client(timeout=5) as http:
        for region in set(POOLS.values()):
            listed = http.get(f"{control_url(ctx, region)}/engines").json()
            for engine in [*listed["engines"], *listed["retired"]]:
                if engine["labels"].get("pod", "").startswith(f"{FACTORY}-"):
                    totals.update(engine["requests"])
    return totals


def _live_engine_pods(fleet: Fleet) -> set[str]:
    ctx = FleetContext(FleetHome(fleet.home), load_topology(), lambda _: None)
    with httpx.Client(timeout=5) as http:
        return {
            engine["labels"]["pod"]
            for region in set(POOLS.values())
            for engine in http.get(f"{control_url(ctx, region)}/engines").json()["engines"]
            if engine["labels"].get("pod", "").startswith(f"{FACTORY}-")
        }


def _pods(fleet: Fleet) -> list[dict[str, Any]]:
    selector = f"inference.factory.dev/factory={FACTORY}"
    items: list[dict[str, Any]] = _json(fleet, "get", "pods", "-n", NAMESPACE, "-l", selector)[
        "items"
    ]
    return items


@dataclass
class Outcome:
    """What the client saw."""

    sent: int = 0
    complete: int = 0
    failures: Counter[str] = field(default_factory=Counter)


async def _ask(client: httpx.AsyncClient, url: str, key: str, n: int, outcome: Outcome) -> None:
    question = {"role": "user", "content": f"Question {n}: how is the roll going?"}
    body = {"model": MODEL, "stream": True, "max_tokens": 16 + n % 32, "messages": [question]}
    finish: str | None = None
    done = False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as reply:  # fmt: skip
            if reply.status_code != 200:
                error = json.loads(await reply.aread()).get("error", {})
                outcome.failures[f"{reply.status_code} {error.get('code')}"] += 1
                return
            async for line in reply.aiter_lines():
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                elif line.startswith("data: "):
                    choices = json.loads(data).get("choices") or [{}]
                    finish = choices[0].get("finish_reason") or finish
    except httpx.HTTPError as exc:
        outcome.failures[type(exc).__name__] += 1
        return
    if done and finish in {"stop", "length"}:
        outcome.complete += 1
    else:
        outcome.failures[f"incomplete stream (finish {finish}, done {done})"] += 1


async def _load(url: str, key: str, stop_at: float, outcome: Outcome) -> None:
    """Poisson arrivals at RATE until `stop_at`; then waits for what is in flight."""
    rng = random.Random(18)
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        next_at = time.monotonic()
        while next_at < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            task = asyncio.create_task(_ask(client, url, key, outcome.sent, outcome))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            outcome.sent += 1
            next_at += rng.expovariate(RATE)
        if tasks:
            await asyncio.wait(tasks, timeout=90)


def _serves(url: str, key: str) -> bool:
    async def once() -> Outcome:
        outcome = Outcome(sent=1)
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            await _ask(client, url, key, 0, outcome)
        return outcome

    return asyncio.run(once()).complete == 1


def test_scale_down_and_roll_under_load_drop_nothing(fleet: Fleet) -> None:
    url, key = fleet.env["router_url"], fleet.env["tenants"]["eu-only"]["api_key"]
    fleet.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(_factory_doc()))
    try:
        wait_until(lambda: _settled(fleet, {"h100-dub": 2, "h100-fra": 1}, {}), 120,
                   interval=0.5, what="the factory's pools ready")  # fmt: skip
        wait_until(lambda: _serves(url, key), 60, interval=0.5, what="the router to serve it")
        before = _engine_totals(fleet)
        outcome = Outcome()
        loader = threading.Thread(target=lambda: asyncio.run(
            _load(url, key, time.monotonic() + DURATION, outcome)))  # fmt: skip
        loader.start()
        try:
            _scale_down_then_roll(fleet)
        finally:
            loader.join(timeout=DURATION + 120)
        assert not loader.is_alive(), "the load generator did not finish"
        # The roll's old engines drain and stop once idle; then every engine is counted.
        wait_until(lambda: len(_live_engine_pods(fleet)) == 2, 60, interval=0.5,
                   what="the old engines to drain and stop")  # fmt: skip
        served = _engine_totals(fleet) - before
    finally:
        fleet.cluster.kubectl("delete", "inferencefactory", FACTORY, "-n", NAMESPACE,
                              "--ignore-not-found", "--wait=false")  # fmt: skip
    assert outcome.sent >= RATE * DURATION * 0.7, outcome
    assert outcome.failures == Counter(), outcome  # nothing dropped, client side
    assert outcome.complete == outcome.sent, outcome
    # Engine side: every request reached an engine once and finished there.
    assert served["received"] == outcome.sent, served
    assert served["stop"] + served["length"] == outcome.sent, served
    assert served["abort"] == 0 and served["error"] == 0, served


def _scale_down_then_roll(fleet: Fleet) -> None:
    """Scale one pool down, then change the engine arguments of the whole factory, so that
    both pools roll at once with one replica each; checks on the way that a new pod runs
    unready until its engine has loaded and that no pool ever lacks a Ready replica."""
    doc = _factory_doc()["spec"]
    pools = doc["pools"]
    pools[0]["replicas"] = {"min": 1, "max": 3}
    start = _revisions(fleet)
    _patch(fleet, {"pools": pools})
    wait_until(lambda: _settled(fleet, {"h100-dub": 1, "h100-fra": 1}, {}), 60,
               interval=0.5, what="h100-dub scaled down to 1")  # fmt: skip
    assert _revisions(fleet) == start  # a replica count is not a new revision
    _patch(fleet, {"engine": {**doc["engine"], "args": {"maxModelLen": 4096, "maxNumSeqs": 48}}})
    seen_loading: set[str] = set()

    def rolled() -> bool:
        for pod in _pods(fleet):
            conditions = pod["status"].get("conditions") or []
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            if pod["status"].get("phase") == "Running" and not ready:
                seen_loading.add(pod["metadata"]["name"])
        for pool, dep in _deployments(fleet).items():
            assert dep.get("status", {}).get("readyReplicas", 0) >= 1, f"{pool} served nothing"
        return _settled(fleet, {"h100-dub": 1, "h100-fra": 1}, start)

    wait_until(rolled, 90, interval=0.25, what="both pools rolled to the new engine args")
    new_pods = {p["metadata"]["name"] for p in _pods(fleet)}
    # Each new pod was seen running but not Ready while its engine loaded (LOAD_SECONDS).
    assert new_pods <= seen_loading, (new_pods, seen_loading)
