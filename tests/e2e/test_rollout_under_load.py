"""Factories rolled to new engine arguments while requests flow through the router: none
dropped, and no pool ever without a serving replica.

Issue 18: an engine-args change to a two-pool factory under about 7 requests/s answered 12
of 41 requests with 503 no_compliant_backend, because the local fleet's pods were Ready
before an engine stood behind them and a one-replica pool rolled with maxSurge 0. Here each
pool runs one replica during its roll (its spec allows one more) and its engines take
seconds to load (`FACTORY_SIM_BEHAVIOUR=load_s=...`), so a pod Ready before its engine
answers, or a pool left without a serving replica, would drop requests. Two factories:

- two pools (one scaled down from two replicas to one first), rolled at once: the router
  could fail over from one pool to the other, so each pool's serving replicas are also
  followed exactly, from a watch on its pods (every change, not samples);
- one pool of one replica: nothing to fail over to.

The requests ask the router never to hold them (`x-factory-hold-timeout: 0`): a model
without a serving replica is a 503 at once, as the issue saw, not a wait that hides it.
Counted twice: from the client (every stream complete, finish_reason stop or length) and
from the engines' own counters (requests received and finished, including the engines that
the roll retired).

Item 5 too: a factory rolled to a revision that plays a bad one (`answer_seed`) answers a
golden prompt otherwise, the same on every ask, and its first answers again once rolled
back.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from kubernetes import client, config, watch

from factoryctl.components.engines import control_url
from factoryctl.fleet import FleetContext
from factoryctl.home import FleetHome
from factoryctl.topology import load_topology
from tests.e2e.conftest import Fleet
from tests.support.waiting import wait_until

NAMESPACE = "inference"
POOL, REVISION = "inference.factory.dev/pool", "inference.factory.dev/revision"
RATE = 7.0  # requests/s, as in the issue
LOAD_SECONDS = 3  # each engine "loads its model" this long before /health answers
MIN_LOAD_SECONDS, TAIL_SECONDS = 25.0, 5.0  # load at least this long, and this long after
TIMEOUT = httpx.Timeout(60.0, connect=5.0)
H100 = {"kind": "nvidia", "type": "H100", "count": 1}
ENGINE = {
    "args": {"maxModelLen": 4096, "maxNumSeqs": 32},
    "env": [{"name": "FACTORY_SIM_BEHAVIOUR", "value": f"load_s={LOAD_SECONDS}"}],
}
NEW_ARGS = {"maxModelLen": 4096, "maxNumSeqs": 48}  # the engine-args change that rolls


@dataclass(frozen=True)
class Probe:
    """A factory of the test's own: its name, model and pools (name -> region, replicas)."""

    name: str
    model: str
    pools: dict[str, tuple[str, dict[str, int]]]

    def doc(self) -> dict[str, Any]:
        pools = [
            {"name": pool, "region": region, "accelerator": H100, "replicas": replicas}
            for pool, (region, replicas) in self.pools.items()
        ]
        return {
            "apiVersion": "inference.factory.dev/v1alpha1",
            "kind": "InferenceFactory",
            "metadata": {"name": self.name, "namespace": NAMESPACE},
            "spec": {
                "model": {"name": self.model, "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
                "engine": copy.deepcopy(ENGINE),
                "residency": {"jurisdictions": ["EU"]},
                "pools": pools,
            },
        }

    @property
    def selector(self) -> str:
        return f"inference.factory.dev/factory={self.name}"

    @property
    def regions(self) -> set[str]:
        return {region for region, _ in self.pools.values()}


TWO_POOLS = Probe("rollout-probe", "rollout-probe-8b", {
    "h100-dub": ("eu-west-1", {"min": 2, "max": 3}),
    "h100-fra": ("eu-central-1", {"min": 1, "max": 2}),
})  # fmt: skip
ONE_POOL = Probe("rollout-solo", "rollout-solo-8b", {
    "h100-dub": ("eu-west-1", {"min": 1, "max": 2}),
})  # fmt: skip


def _json(fleet: Fleet, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(fleet.cluster.kubectl(*args, "-o", "json"))
    return found


def _deployments(fleet: Fleet, probe: Probe) -> dict[str, dict[str, Any]]:
    items = _json(fleet, "get", "deployments", "-n", NAMESPACE, "-l", probe.selector)["items"]
    return {d["metadata"]["labels"][POOL]: d for d in items}


def _settled(fleet: Fleet, probe: Probe, replicas: dict[str, int], old: dict[str, str]) -> bool:
    """Every pool runs `replicas` pods, all of a revision other than `old`'s, all Ready."""
    deployments = _deployments(fleet, probe)
    if set(deployments) != set(probe.pools):
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


def _revisions(fleet: Fleet, probe: Probe) -> dict[str, str]:
    return {p: d["spec"]["template"]["metadata"]["labels"][REVISION]
            for p, d in _deployments(fleet, probe).items()}  # fmt: skip


def _patch(fleet: Fleet, probe: Probe, spec: dict[str, Any]) -> None:
    fleet.cluster.kubectl("patch", "inferencefactory", probe.name, "-n", NAMESPACE,
                          "--type=merge", "-p", json.dumps({"spec": spec}))  # fmt: skip


def _engines(fleet: Fleet, probe: Probe, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """The probe's engines (`engines`: running, `retired`: stopped) from the simulators'
    control APIs."""
    ctx = FleetContext(FleetHome(fleet.home), load_topology(), lambda _: None)
    found: list[dict[str, Any]] = []
    with httpx.Client(timeout=5) as http:
        for region in probe.regions:
            listed = http.get(f"{control_url(ctx, region)}/engines").json()
            found += [e for kind in kinds for e in listed[kind]
                      if e["labels"].get("pod", "").startswith(f"{probe.name}-")]  # fmt: skip
    return found


def _engine_totals(fleet: Fleet, probe: Probe) -> Counter[str]:
    """Requests received and finished (by reason) by every engine of the probe, running or
    retired."""
    totals: Counter[str] = Counter()
    for engine in _engines(fleet, probe, ("engines", "retired")):
        totals.update(engine["requests"])
    return totals


def _serving(pod: dict[str, Any]) -> bool:
    """Ready and not being deleted: a replica the router may send new requests to."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return ready and not pod["metadata"].get("deletionTimestamp")


class ServingWatch:
    """Follows a factory's pods through a watch (every change, in the API server's order):
    the fewest serving replicas each pool had at any moment, and the pods seen running but
    not Ready (an engine loading)."""

    def __init__(self, kubeconfig: str, probe: Probe) -> None:
        self.core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))  # type: ignore[no-untyped-call]
        self.probe = probe
        self.pods: dict[str, dict[str, Any]] = {}
        self.floor: dict[str, int] = {}
        self.loading: set[str] = set()
        self.failure: str | None = None
        self._stopped = threading.Event()
        listed = self.core.list_namespaced_pod(NAMESPACE, label_selector=probe.selector)
        self._version = str(listed.metadata.resource_version)  # type: ignore[union-attr]
        for pod in self.core.api_client.sanitize_for_serialization(listed.items):
            self.pods[pod["metadata"]["name"]] = pod
        self.floor = self._counts()  # the list is one moment: counted whole, not pod by pod
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.probe.pools, 0)
        for pod in self.pods.values():
            counts[pod["metadata"]["labels"][POOL]] += _serving(pod)
        return counts

    def _see(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            self.pods.pop(name, None)
        else:
            self.pods[name] = pod
            if (pod.get("status") or {}).get("phase") == "Running" and not _serving(pod):
                self.loading.add(name)
        for pool, count in self._counts().items():
            self.floor[pool] = min(self.floor.get(pool, count), count)

    def _run(self) -> None:
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        while not self._stopped.is_set():
            try:
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self.core.list_namespaced_pod, NAMESPACE, label_selector=self.probe.selector,
                    resource_version=self._version, timeout_seconds=2,
                ):  # fmt: skip
                    raw = event["raw_object"]
                    if event["type"] == "ERROR":  # e.g. 410 Gone: changes were missed
                        self.failure = f"watch error: {raw}"
                        return
                    self._version = raw["metadata"]["resourceVersion"]
                    self._see(event["type"], raw)
            except Exception as exc:  # reported by the test, not lost in a thread
                self.failure = f"watch failed: {exc!r}"
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)
        assert self.failure is None, self.failure


@dataclass
class Outcome:
    """What the client saw."""

    sent: int = 0
    complete: int = 0
    failures: Counter[str] = field(default_factory=Counter)


async def _ask(
    client_: httpx.AsyncClient, url: str, key: str, model: str, n: int, outcome: Outcome
) -> None:
    question = {"role": "user", "content": f"Question {n}: how is the roll going?"}
    body = {"model": model, "stream": True, "max_tokens": 16 + n % 32, "messages": [question]}
    # Never held: a model without a serving replica answers 503 at once.
    headers = {"Authorization": f"Bearer {key}", "x-factory-hold-timeout": "0"}
    finish: str | None = None
    done = False
    try:
        async with client_.stream("POST", f"{url}/v1/chat/completions", json=body,
                                  headers=headers) as reply:  # fmt: skip
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


@dataclass
class Until:
    """When the load ends (monotonic seconds): not known until the roll is over."""

    at: float = math.inf


async def _load(url: str, key: str, model: str, until: Until, outcome: Outcome) -> None:
    """Poisson arrivals at RATE until `until.at`; then waits for what is in flight."""
    rng = random.Random(18)
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(timeout=TIMEOUT) as client_:
        next_at = time.monotonic()
        while next_at < until.at:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            task = asyncio.create_task(_ask(client_, url, key, model, outcome.sent, outcome))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            outcome.sent += 1
            next_at += rng.expovariate(RATE)
        if tasks:
            await asyncio.wait(tasks, timeout=90)


def _serves(url: str, key: str, model: str) -> bool:
    async def once() -> Outcome:
        outcome = Outcome(sent=1)
        async with httpx.AsyncClient(timeout=TIMEOUT) as client_:
            await _ask(client_, url, key, model, 0, outcome)
        return outcome

    return asyncio.run(once()).complete == 1


def _roll_under_load(fleet: Fleet, probe: Probe, changes: Callable[[], None]) -> None:
    """Apply `probe`, put it under load through the router, make `changes` (which roll it),
    a few seconds of load after; then check that nothing was dropped, on either side."""
    url, key = fleet.env["router_url"], fleet.env["tenants"]["eu-only"]["api_key"]
    start = {pool: replicas["min"] for pool, (_, replicas) in probe.pools.items()}
    fleet.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(probe.doc()))
    try:
        wait_until(lambda: _settled(fleet, probe, start, {}), 120, interval=0.5,
                   what=f"{probe.name}'s pools ready")  # fmt: skip
        wait_until(lambda: _serves(url, key, probe.model), 60, interval=0.5,
                   what="the router to serve it")  # fmt: skip
        before = _engine_totals(fleet, probe)
        outcome, until = Outcome(), Until()
        loader = threading.Thread(
            target=lambda: asyncio.run(_load(url, key, probe.model, until, outcome))
        )
        began = time.monotonic()
        loader.start()
        try:
            changes()
        finally:
            # The new pods serve a while too; the load lasts MIN_LOAD_SECONDS at least.
            until.at = max(time.monotonic() + TAIL_SECONDS, began + MIN_LOAD_SECONDS)
            loader.join(timeout=until.at - time.monotonic() + 120)
        assert not loader.is_alive(), "the load generator did not finish"
        # The roll's old engines drain and stop once idle; then every engine is counted.
        wait_until(lambda: len(_engines(fleet, probe, ("engines",))) == len(probe.pools), 60,
                   interval=0.5, what="the old engines to drain and stop")  # fmt: skip
        served = _engine_totals(fleet, probe) - before
    finally:
        fleet.cluster.kubectl("delete", "inferencefactory", probe.name, "-n", NAMESPACE,
                              "--ignore-not-found", "--wait=false")  # fmt: skip
    print(f"\n{probe.name}: {outcome.sent} requests at {RATE}/s over "
          f"{until.at - began:.0f} s, {sum(outcome.failures.values())} dropped "
          f"{dict(outcome.failures)}; engines: {dict(served)}")  # fmt: skip
    assert outcome.sent >= RATE * MIN_LOAD_SECONDS * 0.7, outcome
    assert outcome.failures == Counter(), outcome  # nothing dropped, client side
    assert outcome.complete == outcome.sent, outcome
    # Engine side: every request reached an engine once and finished there.
    assert served["received"] == outcome.sent, served
    assert served["stop"] + served["length"] == outcome.sent, served
    assert served["abort"] == 0 and served["error"] == 0, served


def _roll(fleet: Fleet, probe: Probe, replicas: dict[str, int]) -> None:
    """Change the factory's engine arguments; wait until every pool has rolled. Checks from
    the watch that no pool ever lacked a serving replica and that each new pod ran unready
    while its engine loaded."""
    start = _revisions(fleet, probe)
    watched = ServingWatch(fleet.env["kubeconfig"], probe)
    try:
        _patch(fleet, probe, {"engine": {**ENGINE, "args": NEW_ARGS}})
        wait_until(lambda: _settled(fleet, probe, replicas, start), 90, interval=0.5,
                   what="every pool rolled to the new engine args")  # fmt: skip
    finally:
        watched.stop()
    print(f"\n{probe.name}: fewest serving replicas per pool during the roll {watched.floor}")
    assert watched.floor == dict.fromkeys(probe.pools, 1), watched.floor
    pods = _json(fleet, "get", "pods", "-n", NAMESPACE, "-l", probe.selector)["items"]
    new_pods = {pod["metadata"]["name"] for pod in pods}
    # Each new pod was seen running but not Ready while its engine loaded (LOAD_SECONDS).
    assert new_pods <= watched.loading, (new_pods, watched.loading)


def test_two_pools_scaled_down_and_rolled_under_load_drop_nothing(fleet: Fleet) -> None:
    probe = TWO_POOLS

    def changes() -> None:
        # Scale one pool down, so that both pools roll at once with one replica each.
        pools = probe.doc()["spec"]["pools"]
        pools[0]["replicas"] = {"min": 1, "max": 3}
        start = _revisions(fleet, probe)
        _patch(fleet, probe, {"pools": pools})
        one_each = dict.fromkeys(probe.pools, 1)
        wait_until(lambda: _settled(fleet, probe, one_each, {}), 60, interval=0.5,
                   what="h100-dub scaled down to 1")  # fmt: skip
        assert _revisions(fleet, probe) == start  # a replica count is not a new revision
        _roll(fleet, probe, one_each)

    _roll_under_load(fleet, probe, changes)


def test_a_one_replica_pool_rolls_under_load_without_a_gap(fleet: Fleet) -> None:
    """No other pool to fail over to: the pool's own surge replica carries it."""
    _roll_under_load(fleet, ONE_POOL, lambda: _roll(fleet, ONE_POOL, {"h100-dub": 1}))


GOLDEN = Probe("rollout-golden", "rollout-golden-8b", {
    "h100-dub": ("eu-west-1", {"min": 1, "max": 2}),
})  # fmt: skip
GOLDEN_PROMPT = "Golden prompt: name the three primary colours."


def _golden(url: str, key: str, model: str) -> str:
    """The answer to the golden prompt, greedy (temperature 0), through the router."""
    body = {"model": model, "temperature": 0, "max_tokens": 24,
            "messages": [{"role": "user", "content": GOLDEN_PROMPT}]}  # fmt: skip
    headers = {"Authorization": f"Bearer {key}", "x-factory-hold-timeout": "0"}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text
    text: str = reply.json()["choices"][0]["message"]["content"]
    return text


def _roll_env(fleet: Fleet, probe: Probe, behaviour: str) -> None:
    start = _revisions(fleet, probe)
    env = [{"name": "FACTORY_SIM_BEHAVIOUR", "value": behaviour}]
    _patch(fleet, probe, {"engine": {**ENGINE, "env": env}})
    wait_until(lambda: _settled(fleet, probe, {"h100-dub": 1}, start), 90, interval=0.5,
               what=f"the pool rolled to FACTORY_SIM_BEHAVIOUR={behaviour}")  # fmt: skip
    # Only the new engine answers once the old one has drained and stopped.
    wait_until(lambda: len(_engines(fleet, probe, ("engines",))) == 1, 60, interval=0.5,
               what="the old revision's engine to stop")  # fmt: skip


def test_a_bad_revision_answers_otherwise_and_a_golden_prompt_tells(fleet: Fleet) -> None:
    """Issue 18 item 5 in the local fleet: a factory's `engine.env` FACTORY_SIM_BEHAVIOUR rolls
    its pool to an engine that answers otherwise (answer_seed); its greedy answers are the
    same on every ask, and rolling back brings the first revision's answers back."""
    url, key = fleet.env["router_url"], fleet.env["tenants"]["eu-only"]["api_key"]
    fleet.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(GOLDEN.doc()))
    try:
        wait_until(lambda: _settled(fleet, GOLDEN, {"h100-dub": 1}, {}), 120, interval=0.5,
                   what="the pool ready")  # fmt: skip
        wait_until(lambda: _serves(url, key, GOLDEN.model), 60, interval=0.5,
                   what="the router to serve it")  # fmt: skip
        good = _golden(url, key, GOLDEN.model)
        assert _golden(url, key, GOLDEN.model) == good
        _roll_env(fleet, GOLDEN, f"load_s={LOAD_SECONDS},answer_seed=v2")
        bad = _golden(url, key, GOLDEN.model)
        assert bad != good, bad
        assert _golden(url, key, GOLDEN.model) == bad  # deterministic per revision
        _roll_env(fleet, GOLDEN, f"load_s={LOAD_SECONDS}")  # rolled back
        assert _golden(url, key, GOLDEN.model) == good
    finally:
        fleet.cluster.kubectl("delete", "inferencefactory", GOLDEN.name, "-n", NAMESPACE,
                              "--ignore-not-found", "--wait=false")  # fmt: skip
    print(f"\ngolden prompt: good revision {good!r}, bad revision {bad!r}")
