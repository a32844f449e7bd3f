"""The operator's autoscaler on the whole local fleet, through the router (issue 17).

A factory of the test's own (its own namespace and model) serves the EU from two pools,
`dub` (eu-west-1) and `fra` (eu-central-1), one to three replicas each, and the US from
`iad` (us-east-1, one to two). The eu-only tenant's load goes through the router with the
`openai` client; the operator decides every 5 s from the fleet's Prometheus, which scrapes
the simulated engines every second. Shown here:

- a surge on the EU model scales the EU pools up (the time from the queue building, read
  back from Prometheus, to the first scale-up is printed); after the surge they shrink back
  to one replica each, every pool's scale events going up and then only down (Events and
  the operator's `factory_operator_scale_events_total` agree); no request is dropped,
  counted by the client and by the engines' own counters, including the engines the
  scale-down retired; the US pool is never touched;
- a surge beyond what the EU pools carry at their max: `CapacityPressure` names EU and the
  missing capacity (condition and metric), not one request reaches an engine outside the
  EU, and the overflow is queued for a bounded time (every request answered well within
  the client's timeout) or refused at once, never left hanging.

Engines run `slow=4` (about 30 ms a decode step on the H100 profile) so that a request
lasts a second or two and a handful of client coroutines make a queue on a loaded machine.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
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
from tests.e2e.test_router_openai import assert_stayed_inside, settled_engine_requests
from tests.support.waiting import wait_until

NAMESPACE, FACTORY, MODEL = "e2e-autoscaling", "autoscale-probe", "autoscale-probe-8b"
EU_POOLS = {"dub": "eu-west-1", "fra": "eu-central-1"}
US_POOLS = {"iad": "us-east-1"}
EU_MAX = 3
# maxNumSeqs 4 at the balanced policy's batchUtilization 0.8: 3.2 requests per replica.
MAX_NUM_SEQS, PER_REPLICA = 4, 3.2
# Windows for a test, in the local fleet's seconds (its engines start in seconds): no
# growth projected past 5 s, up at once, down one replica at a time 15 s after any change
# and only to the highest count of the last 20 s.
AUTOSCALING = {
    "expectedStartupSeconds": 5,
    "scaleUp": {"stabilizationSeconds": 0, "maxStepReplicas": 4},
    "scaleDown": {"stabilizationSeconds": 20, "cooldownSeconds": 15, "maxStepReplicas": 1},
}
MAX_TOKENS = 48
# Generous deadlines for a loaded 2-core CI machine; the issue's own bounds (15 s from the
# queue to the scale-up) are measured and printed, and benchmarked in bench/autoscaling.
SETTLE_S = 180.0
SCALE_UP_DEADLINE_S = 60.0
SCALE_DOWN_DEADLINE_S = 240.0
PRESSURE_DEADLINE_S = 90.0
CLIENT_TIMEOUT_S = 45.0  # a request not answered by then counts as a hang
FAST_ERROR_S = 5.0  # a refused request is refused within this


def _factory_doc() -> dict[str, Any]:
    def pool(name: str, region: str, high: int) -> dict[str, Any]:
        return {
            "name": name,
            "region": region,
            "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
            "replicas": {"min": 1, "max": high},
        }

    return {
        "apiVersion": "inference.factory.dev/v1alpha1",
        "kind": "InferenceFactory",
        "metadata": {"name": FACTORY, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": MODEL, "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": {
                "args": {"maxModelLen": 4096, "maxNumSeqs": MAX_NUM_SEQS},
                "env": [{"name": "FACTORY_SIM_BEHAVIOUR", "value": "slow=4"}],
            },
            "residency": {"jurisdictions": ["EU", "US"]},
            "autoscaling": AUTOSCALING,
            "pools": [
                pool("dub", "eu-west-1", EU_MAX),
                pool("fra", "eu-central-1", EU_MAX),
                pool("iad", "us-east-1", 2),
            ],
        },
    }


def _json(fleet: Fleet, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(fleet.cluster.kubectl(*args, "-o", "json"))
    return found


def _deployments(fleet: Fleet) -> dict[str, dict[str, Any]]:
    items = _json(
        fleet,
        "get",
        "deployments",
        "-n",
        NAMESPACE,
        "-l",
        f"inference.factory.dev/factory={FACTORY}",
    )["items"]
    return {d["metadata"]["labels"]["inference.factory.dev/pool"]: d for d in items}


def _replicas(fleet: Fleet) -> dict[str, int]:
    return {pool: int(d["spec"].get("replicas", 0)) for pool, d in _deployments(fleet).items()}


def _settled_at_min(fleet: Fleet) -> bool:
    """Every pool runs one Ready replica and nothing more (no pod still terminating)."""
    deployments = _deployments(fleet)
    if set(deployments) != {*EU_POOLS, *US_POOLS}:
        return False
    for dep in deployments.values():
        status = dep.get("status", {})
        if (dep["spec"].get("replicas"), status.get("replicas"), status.get("readyReplicas")) != (
            1,
            1,
            1,
        ):
            return False
    return True


def _factory_status(fleet: Fleet) -> dict[str, Any]:
    found: dict[str, Any] = _json(fleet, "get", "inferencefactory", FACTORY, "-n", NAMESPACE)
    return found.get("status") or {}


def _condition(fleet: Fleet, kind: str) -> dict[str, Any] | None:
    for cond in _factory_status(fleet).get("conditions") or []:
        if cond["type"] == kind:
            found: dict[str, Any] = cond
            return found
    return None


def _scale_events(fleet: Fleet) -> list[tuple[datetime, str, str, str]]:
    """(time, pool, Up/Down, message) of every ScaledUp/ScaledDown Event on the factory."""
    found = []
    for event in _json(fleet, "get", "events", "-n", NAMESPACE)["items"]:
        reason = event.get("reason")
        if reason not in {"ScaledUp", "ScaledDown"}:
            continue
        if event["involvedObject"].get("name") != FACTORY:
            continue
        message = event.get("message") or ""
        pool = re.match(r"pool (\S+?):", message)
        when = event.get("lastTimestamp") or event.get("eventTime") or ""
        for _ in range(int(event.get("count") or 1)):
            found.append(
                (
                    datetime.fromisoformat(when.replace("Z", "+00:00")),
                    pool.group(1) if pool else "?",
                    "Up" if reason == "ScaledUp" else "Down",
                    message,
                )
            )
    return sorted(found)


def _operator_samples(fleet: Fleet, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """One metric of the operator, this factory's series only, by their labels."""
    text = httpx.get(f"http://{fleet.env['operator_metrics']}/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("factory") == FACTORY:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _engine_totals(fleet: Fleet) -> Counter[str]:
    """Requests received and finished (by reason) by every engine of the factory, running or
    retired by a scale-down, from the simulators' control APIs."""
    ctx = FleetContext(FleetHome(fleet.home), load_topology(), lambda _: None)
    totals: Counter[str] = Counter()
    with httpx.Client(timeout=5) as http:
        for region in {*EU_POOLS.values(), *US_POOLS.values()}:
            listed = http.get(f"{control_url(ctx, region)}/engines").json()
            for engine in [*listed["engines"], *listed["retired"]]:
                if engine["labels"].get("pod", "").startswith(f"{FACTORY}-"):
                    totals.update(engine["requests"])
    return totals


def _live_engines(fleet: Fleet) -> int:
    """Engines of the factory still running (a retired one drains, then stops)."""
    ctx = FleetContext(FleetHome(fleet.home), load_topology(), lambda _: None)
    with httpx.Client(timeout=5) as http:
        return sum(
            1
            for region in {*EU_POOLS.values(), *US_POOLS.values()}
            for engine in http.get(f"{control_url(ctx, region)}/engines").json()["engines"]
            if engine["labels"].get("pod", "").startswith(f"{FACTORY}-")
        )


def _first_queue(fleet: Fleet, start: float, end: float) -> float | None:
    """When the EU pools' engines first had a request waiting, from Prometheus (unix s)."""
    query = (
        f'sum(vllm:num_requests_waiting{{namespace="{NAMESPACE}", factory="{FACTORY}", '
        f'pool=~"dub|fra"}})'
    )
    reply = httpx.get(
        f"{fleet.env['prometheus_url']}/api/v1/query_range",
        timeout=10,
        params={"query": query, "start": start, "end": end, "step": 1},
    ).json()
    for series in reply["data"]["result"]:
        for stamp, value in series["values"]:
            if float(value) > 0:
                return float(stamp)
    return None


@dataclass
class Answer:
    status: int  # HTTP status; 0: no answer (timeout or connection error)
    seconds: float
    error: str = ""
    jurisdiction: str = ""


@dataclass
class ClosedLoop:
    """Client coroutines of the eu-only tenant, each sending one chat request after the
    other until its group is stopped; run on an event loop in a thread of its own."""

    url: str
    key: str
    answers: list[Answer] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _groups: list[tuple[int, threading.Event]] = field(default_factory=list)

    def add(self, workers: int) -> threading.Event:
        """A group of `workers` clients; set the returned event to stop them."""
        stop = threading.Event()
        self._groups.append((workers, stop))
        return stop

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        for _, stop in self._groups:
            stop.set()
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load did not stop"

    async def _run(self) -> None:
        async with openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=CLIENT_TIMEOUT_S
        ) as client:
            workers = [
                self._worker(client, stop, n)
                for n, (count, stop) in enumerate(self._groups)
                for _ in range(count)
            ]
            await asyncio.gather(*workers)

    async def _worker(self, client: openai.AsyncOpenAI, stop: threading.Event, n: int) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    max_tokens=MAX_TOKENS,
                    extra_body={"ignore_eos": True},
                    messages=[{"role": "user", "content": f"Group {n}: how busy is the EU?"}],
                )
                chat = raw.parse()
                ok = bool(chat.choices and chat.choices[0].message.content)
                answer = Answer(
                    200 if ok else 599,
                    time.monotonic() - started,
                    "" if ok else "empty answer",
                    raw.headers.get("x-factory-jurisdiction", ""),
                )
            except openai.APIStatusError as exc:
                answer = Answer(exc.status_code, time.monotonic() - started, str(exc)[:200])
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                answer = Answer(0, time.monotonic() - started, type(exc).__name__)
            self.answers.append(answer)
            if answer.status != 200:
                await asyncio.sleep(0.5)  # a refused client backs off a little


def _serves(url: str, key: str) -> bool:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30) as client:
        try:
            chat = client.chat.completions.create(
                model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Up?"}]
            )
        except openai.OpenAIError:
            return False
    return bool(chat.choices[0].message.content)


@pytest.fixture(scope="module")
def probe(fleet: Fleet) -> Iterator[Fleet]:
    """The test's factory in its own namespace, settled at one replica a pool and served."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    fleet.cluster.kubectl("apply", "-f", "-", input=json.dumps(namespace))
    try:
        fleet.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(_factory_doc()))
        yield fleet
    finally:
        # kubectl's own --timeout, within the subprocess's (a deletion can take over a minute
        # on a loaded machine).
        wait = ("--ignore-not-found", "--timeout=120s")
        delete = fleet.cluster.kubectl
        delete(
            "delete", "inferencefactory", FACTORY, "-n", NAMESPACE, *wait, check=False, timeout=150
        )
        delete("delete", "namespace", NAMESPACE, *wait, check=False, timeout=150)


def _ready_at_min(fleet: Fleet) -> tuple[str, str]:
    url, key = fleet.env["router_url"], fleet.env["tenants"]["eu-only"]["api_key"]
    wait_until(
        lambda: _settled_at_min(fleet),
        SETTLE_S,
        interval=0.5,
        what="every pool at one Ready replica",
    )
    wait_until(
        lambda: _live_engines(fleet) == len(EU_POOLS) + len(US_POOLS),
        60,
        interval=0.5,
        what="the engines of retired replicas stopped",
    )
    wait_until(lambda: _serves(url, key), 60, interval=0.5, what="the router to serve the model")
    return url, key


def test_an_eu_surge_scales_the_eu_pools_up_and_back_down_without_flapping_or_drops(
    probe: Fleet,
) -> None:
    fleet = probe
    url, key = _ready_at_min(fleet)
    scale_before = _operator_samples(fleet, "factory_operator_scale_events_total")
    engines_before, regions_before = _engine_totals(fleet), settled_engine_requests(fleet)
    load = ClosedLoop(url, key)
    load.add(2)  # a baseline that lasts through the scale-down
    surge = load.add(10)  # 12 requests in flight: about 4 replicas' worth
    surge_at, surge_wall = time.monotonic(), time.time()
    load.start()
    try:
        grown = wait_until(
            lambda: (r := _replicas(fleet)) and sum(r[p] for p in EU_POOLS) > 2 and r,
            SCALE_UP_DEADLINE_S,
            interval=0.5,
            what="the EU pools' scale-up",
        )
        scaled_after = time.monotonic() - surge_at
        scaled_wall = time.time()
        # The surge goes on until the new replicas are Ready and have served a while.
        wait_until(
            lambda: all(
                d.get("status", {}).get("readyReplicas") == d["spec"]["replicas"]
                for d in _deployments(fleet).values()
            ),
            60,
            interval=0.5,
            what="the new replicas Ready",
        )
        wait_until(
            lambda: time.monotonic() - surge_at > scaled_after + 15,
            60,
            interval=0.5,
            what="15 s of the surge on the grown pools",
        )
        surge.set()
        wait_until(
            lambda: _settled_at_min(fleet),
            SCALE_DOWN_DEADLINE_S,
            interval=1,
            what="every pool back at one replica",
        )
        down_after = time.monotonic() - surge_at
    finally:
        load.join(CLIENT_TIMEOUT_S + 30)

    # Engines retired by the scale-down drain, then every request is counted.
    def counted() -> Counter[str] | None:
        totals = _engine_totals(fleet) - engines_before
        return totals if totals["received"] == len(load.answers) else None

    served = wait_until(counted, 60, interval=0.5, what="every request counted by the engines")
    assert served is not None
    queue_at = _first_queue(fleet, surge_wall - 2, scaled_wall + 1)
    queue_to_scale = None if queue_at is None else scaled_wall - queue_at
    queued = "never" if queue_at is None else f"{queue_at - surge_wall:+.1f} s"
    to_scale = "-" if queue_to_scale is None else f"{queue_to_scale:.1f}"
    print(
        f"\nsurge -> EU scale-up {scaled_after:.1f} s ({grown}); queue first seen {queued} "
        f"after the surge, scale-up {to_scale} s after it; back at min {down_after:.1f} s "
        f"after the surge began; {len(load.answers)} requests"
    )

    statuses = Counter(a.status for a in load.answers)
    assert statuses == Counter({200: len(load.answers)}), (statuses, load.answers[:5])
    assert {a.jurisdiction for a in load.answers} == {"EU"}
    assert served["stop"] + served["length"] == served["received"], served
    assert served["abort"] == 0 and served["error"] == 0, served
    assert_stayed_inside(regions_before, settled_engine_requests(fleet), {"EU"})

    events = _scale_events(fleet)
    print("scale events: " + "; ".join(f"{t:%H:%M:%S} {m}" for t, _, _, m in events))
    by_pool: dict[str, list[str]] = {}
    for _, pool, direction, _ in events:
        by_pool.setdefault(pool, []).append(direction)
    assert set(by_pool) <= set(EU_POOLS) and by_pool, by_pool  # the US pool never moved
    for pool, directions in by_pool.items():
        ups = directions.count("Up")
        assert ups >= 1 and directions == ["Up"] * ups + ["Down"] * (len(directions) - ups), (
            f"{pool} flapped: {directions}"
        )
    after = _operator_samples(fleet, "factory_operator_scale_events_total")
    moved = {
        dict(k)["pool"] + "/" + dict(k)["direction"]: v - scale_before.get(k, 0.0)
        for k, v in after.items()
        if v - scale_before.get(k, 0.0)
    }
    by_event = Counter(f"{pool}/{d}" for _, pool, d, _ in events)
    assert moved == dict(by_event), (moved, by_event)


# The missing requests are whole replicas' worth at 3.2 each: 12.8, 16, 19.2...
PRESSURE = re.compile(
    r"EU: every pool at its ceiling \((?:dub, fra|fra, dub)\); ([\d.]+) requests, about "
    r"(\d+) more replicas of (\w+), have nowhere compliant to go"
)


def _pressure(fleet: Fleet, at_least: float = 0.0) -> dict[str, Any] | None:
    found = _condition(fleet, "CapacityPressure")
    if not found or found["status"] != "True":
        return None
    match = PRESSURE.search(found["message"])
    if match and float(match.group(1)) >= at_least:
        return found
    return None


def test_an_eu_surge_beyond_the_eu_maximum_reports_capacity_pressure_and_stays_in_the_eu(
    probe: Fleet,
) -> None:
    """40 clients against what two EU pools at three replicas carry (6 x 3.2 = 19.2 requests
    at the target, 24 in the engines' batches): CapacityPressure names EU and about 21
    missing requests, while the US pool of the same model stays idle at one replica."""
    fleet = probe
    url, key = _ready_at_min(fleet)
    regions_before = settled_engine_requests(fleet)
    load = ClosedLoop(url, key)
    clients = 40
    target = clients - EU_MAX * len(EU_POOLS) * PER_REPLICA
    load.add(clients)
    load.start()
    try:
        wait_until(
            lambda: _replicas(fleet) == {"dub": EU_MAX, "fra": EU_MAX, "iad": 1},
            PRESSURE_DEADLINE_S,
            interval=0.5,
            what="the EU pools at their max",
        )
        # The first report can come while the operator's demand signal (a rate over the
        # last samples) is still climbing with the surge: 3.2 missing at first on a fast
        # machine. Wait for the report that has caught up with the 40 clients.
        found = wait_until(
            lambda: _pressure(fleet, at_least=target / 2),
            PRESSURE_DEADLINE_S,
            interval=0.5,
            what="CapacityPressure on EU with the surge's missing requests",
        )
        missing = _operator_samples(fleet, "factory_operator_capacity_pressure_missing_requests")
        replicas = _operator_samples(fleet, "factory_operator_capacity_pressure_missing_replicas")
        # Some more of the surge at the ceiling: the overflow is queued or refused, and
        # nothing goes to the idle US pool.
        wait_until(
            lambda: len(load.answers) >= 3 * clients,
            90,
            interval=0.5,
            what="three rounds of the surge's requests answered",
        )
    finally:
        load.join(CLIENT_TIMEOUT_S + 30)
    assert found is not None
    print(f"\nCapacityPressure: {found['message']}; metrics {missing} {replicas}")
    match = PRESSURE.search(found["message"])
    assert match is not None
    requests_missing, replicas_missing = float(match.group(1)), int(match.group(2))
    # The load is 40 requests in flight against 19.2 at the target: about 21 missing, counted
    # in whole replicas of 3.2 per pool (each pool's wanted count, rounded up, beyond its
    # max: up to one replica more per pool). Prometheus sees fewer than 40 when clients are
    # between two requests or still in the router (16 = 5 replicas, twice, on a busy 2-core
    # machine; 19.2 on a quiet one): a lower bound with room.
    rounding = len(EU_POOLS) * PER_REPLICA
    assert target / 2 <= requests_missing <= target + rounding, found["message"]
    assert replicas_missing == math.ceil(requests_missing / PER_REPLICA - 1e-9), found["message"]
    eu = {"jurisdiction": "EU", "namespace": NAMESPACE, "factory": FACTORY}
    key_of = tuple(sorted(eu.items()))
    assert missing.get(key_of, 0) > 0 and replicas.get(key_of, 0) > 0, (missing, replicas)
    assert all(dict(k)["jurisdiction"] == "EU" for k, v in missing.items() if v), missing

    assert_stayed_inside(regions_before, settled_engine_requests(fleet), {"EU"})
    assert {a.jurisdiction for a in load.answers if a.status == 200} == {"EU"}
    hung = [a for a in load.answers if a.status == 0]
    assert not hung, hung[:5]
    slow_refusals = [a for a in load.answers if a.status != 200 and a.seconds > FAST_ERROR_S]
    assert not slow_refusals, slow_refusals[:5]
    served = [a.seconds for a in load.answers if a.status == 200]
    print(
        f"{len(load.answers)} answers: {Counter(a.status for a in load.answers)}; "
        f"longest served {max(served):.1f} s"
    )
    assert served and max(served) < CLIENT_TIMEOUT_S  # bounded queueing, never a hang
    assert _replicas(fleet)["iad"] == 1

    wait_until(
        lambda: (
            (c := _condition(fleet, "CapacityPressure"))
            and c["status"] == "False"
            and c["reason"] == "WithinCapacity"
        ),
        PRESSURE_DEADLINE_S,
        interval=0.5,
        what="CapacityPressure over once the surge ends",
    )
