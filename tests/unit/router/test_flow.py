"""Priority and fairness under saturation (`factory_router.flow`): the pure scheduler (order,
round robin, shedding, bounds) and the asyncio control (the one check, waiting, dispatch on
a freed slot, the longest wait, clients that leave, metrics)."""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
import itertools
from collections.abc import Sequence

import httpx
import pytest
from prometheus_client import CollectorRegistry

from factory_router.flow.control import FlowControl
from factory_router.flow.saturation import has_room
from factory_router.flow.scheduler import Entry, FlowScheduler
from factory_router.policy.config import FlowConfig, RouterConfig, Timeouts
from factory_router.policy.errors import CapacityShed, PolicyError
from factory_router.policy.fleet import Backend
from factory_router.policy.scoring import LoadSample, Observed
from factory_router.policy.tenants import PriorityClass, hash_key, parse_tenants
from tests.unit.router.router_testkit import (
    TENANTS_DOC,
    auth,
    backend,
    engines,
    router,
    scrape,
    wait_until,
)

HI, S, B = PriorityClass.INTERACTIVE, PriorityClass.STANDARD, PriorityClass.BATCH
EU = frozenset({"EU"})
_ids = itertools.count()


def entry(tenant: str, priority: PriorityClass = S, model: str = "m") -> Entry[int]:
    return Entry(tenant, priority, model, EU, 0.0, next(_ids))


def drain(s: FlowScheduler[int]) -> list[Entry[int]]:
    out = []
    while (e := s.pop_next(lambda _: True)) is not None:
        out.append(e)
    return out


# The scheduler, pure


def test_the_highest_class_goes_first_whatever_came_first() -> None:
    s: FlowScheduler[int] = FlowScheduler(10)
    for e in (entry("b", B), entry("s", S), entry("i", HI), entry("b", B), entry("i", HI)):
        assert s.push(e) is None
    assert [e.priority for e in drain(s)] == [HI, HI, S, B, B]
    assert s.size == 0


def test_tenants_of_one_class_go_in_turn_whatever_each_sent() -> None:
    s: FlowScheduler[int] = FlowScheduler(100)
    for _ in range(30):
        s.push(entry("flooder"))
    for _ in range(10):
        s.push(entry("steady"))
    first_20 = [e.tenant for e in drain(s)][:20]
    assert collections.Counter(first_20) == {"flooder": 10, "steady": 10}
    assert first_20[:4] == ["flooder", "steady", "flooder", "steady"]


def test_within_a_tenant_first_come_first_served() -> None:
    s: FlowScheduler[int] = FlowScheduler(10)
    pushed = [entry("a") for _ in range(4)]
    for e in pushed:
        s.push(e)
    assert drain(s) == pushed


def test_an_entry_without_room_is_passed_over_not_waited_for() -> None:
    s: FlowScheduler[int] = FlowScheduler(10)
    blocked_high = entry("i", HI, model="full")
    low = entry("b", B, model="free")
    same_tenant_free = entry("i", HI, model="free")
    for e in (blocked_high, low, same_tenant_free):
        s.push(e)
    free = lambda e: e.model == "free"  # noqa: E731
    # The higher class first when it can go, even behind its own tenant's blocked request.
    assert s.pop_next(free) is same_tenant_free
    # Capacity the higher class cannot use goes to a lower one (work-conserving).
    assert s.pop_next(free) is low
    assert s.pop_next(free) is None
    assert s.size == 1 and s.queued(HI) == 1


def test_a_full_queue_sheds_the_lowest_class_first() -> None:
    s: FlowScheduler[int] = FlowScheduler(4)
    batch = [entry("flood", B) for _ in range(3)]
    for e in [*batch, entry("std", S)]:
        assert s.push(e) is None
    # An interactive newcomer: the newest request of the batch flooder goes.
    assert s.push(entry("ui", HI)) is batch[-1]
    assert not batch[-1].queued
    assert s.push(entry("ui", HI)) is batch[-2]
    # A batch newcomer to a queue whose lowest class is its own, its flow the longest: itself.
    newcomer = entry("other-batch", B)
    assert s.push(newcomer) is newcomer and not newcomer.queued
    assert s.size == 4 == s.max_queued
    assert [e.priority for e in s.entries()] == [HI, HI, S, B]


def test_within_the_lowest_class_the_tenant_with_most_waiting_is_shed() -> None:
    s: FlowScheduler[int] = FlowScheduler(4)
    flood = [entry("flood", B) for _ in range(3)]
    for e in [*flood, entry("small", B)]:
        s.push(e)
    assert s.push(entry("small", B)) is flood[-1]  # small has 2 with it, flood 3
    assert s.push(entry("small", B)) is not None  # 2 and 2 (+1): the newcomer's flow longest
    assert s.flow_length(B, "flood") == 2 and s.flow_length(B, "small") == 2


def test_a_higher_class_is_never_shed_for_a_lower_one() -> None:
    s: FlowScheduler[int] = FlowScheduler(2)
    s.push(entry("ui", HI))
    s.push(entry("ui2", HI))
    newcomer = entry("flood", B)
    assert s.push(newcomer) is newcomer
    assert s.queued(HI) == 2


def test_no_room_at_all_sheds_every_newcomer() -> None:
    s: FlowScheduler[int] = FlowScheduler(0)
    e = entry("a", HI)
    assert s.push(e) is e and s.size == 0


def test_remove_takes_an_entry_out_once() -> None:
    s: FlowScheduler[int] = FlowScheduler(3)
    a, b = entry("a"), entry("a")
    s.push(a)
    s.push(b)
    assert s.remove(a) and not s.remove(a)
    assert drain(s) == [b]
    assert s.size == 0 and s.queued(S) == 0


# The tenants file


def test_the_class_is_read_from_the_tenants_file_standard_by_default() -> None:
    doc = {
        "admin_keys_sha256": [hash_key("admin-key-000000")],
        "tenants": [
            {"name": "ui", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key("k1")],
             "priority": "interactive"},
            {"name": "plain", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key("k2")]},
        ],
    }  # fmt: skip
    tenants = parse_tenants(doc).tenants
    assert tenants["ui"].priority is HI and tenants["plain"].priority is S
    doc["tenants"][0]["priority"] = "urgent"  # type: ignore[index]
    with pytest.raises(PolicyError):
        parse_tenants(doc)


# The control, asyncio


class FakeView:
    """A LoadView with a capacity and this router's in-flight counts, no snapshot."""

    def __init__(self, capacity: float | None) -> None:
        self.cap = capacity
        self.running: collections.Counter[str] = collections.Counter()
        self.router_region = "eu-west-1"

    def sample(self, backend: Backend) -> LoadSample | None:
        return None

    def inflight(self, backend_id: str) -> int:
        return self.running[backend_id]

    def inflight_at_snapshot(self, backend_id: str) -> int:
        return 0

    def observed_ttft_ms(self, backend_id: str) -> float | None:
        return None

    def observed_duration_ms(self, backend_id: str) -> float | None:
        return None

    def capacity(self, backend: Backend) -> float | None:
        return self.cap

    def measured_rtt_ms(self, region: str) -> float | None:
        return None

    def client_observed(self, backend: Backend) -> Observed:
        return Observed()


ENGINE = Backend(id="p/a", model="m", pool="p", region="eu-west-1", url="http://x")


def control(view: FakeView, **cfg: float) -> tuple[FlowControl, CollectorRegistry]:
    registry = CollectorRegistry()

    def candidates(model: str, allowed: frozenset[str]) -> Sequence[Backend]:
        return [ENGINE]

    config = FlowConfig(enabled=True, poll_seconds=0.01, **cfg)  # type: ignore[arg-type]
    return FlowControl(config, view, candidates, registry), registry


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_room_is_outstanding_under_capacity_and_unknown_capacity_is_room() -> None:
    view = FakeView(2)
    assert has_room(ENGINE, view)
    view.running[ENGINE.id] = 2
    assert not has_room(ENGINE, view)
    view.cap = None
    assert has_room(ENGINE, view)


async def test_requests_wait_while_full_and_go_in_class_order_as_slots_free() -> None:
    view = FakeView(1)
    view.running[ENGINE.id] = 1
    flow, registry = control(view)
    order: list[str] = []

    async def request(name: str, priority: PriorityClass) -> None:
        await flow.wait(name, priority, "m", EU)
        order.append(name)
        view.running[ENGINE.id] += 1  # takes the slot, as the proxy's attempt does

    tasks = [asyncio.create_task(request(n, p)) for n, p in (("b", B), ("s", S), ("i", HI))]
    await asyncio.sleep(0.05)
    assert order == [] and flow.scheduler.size == 3
    assert metric(registry, "factory_router_flow_queued_requests", priority="batch") == 1
    for _ in range(3):
        view.running[ENGINE.id] -= 1  # a request ends
        flow.kick()
        done = len(order) + 1
        while len(order) < done:
            await asyncio.sleep(0)
        await asyncio.sleep(0.03)  # a poll or two: nothing more may go without a free slot
        assert len(order) == done
    await asyncio.gather(*tasks)
    assert order == ["i", "s", "b"]
    assert metric(registry, "factory_router_flow_enqueued_total", priority="interactive") == 1
    assert metric(registry, "factory_router_flow_wait_seconds_count", priority="batch") == 1
    await flow.close()


async def test_a_request_never_waits_longer_than_its_class_allows() -> None:
    view = FakeView(1)
    view.running[ENGINE.id] = 1
    flow, registry = control(view, max_wait_interactive=0.05, max_wait_batch=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CapacityShed) as shed:
        await flow.wait("ui", HI, "m", EU)
    assert 0.05 <= loop.time() - started < 0.5
    assert shed.value.status == 503 and shed.value.retry_after == 2
    assert shed.value.body()["error"]["code"] == "capacity_shed"
    assert metric(registry, "factory_router_flow_shed_total", priority="interactive",
                  reason="max_wait") == 1  # fmt: skip
    assert flow.scheduler.size == 0
    await flow.close()


async def test_a_full_queue_sheds_the_batch_request_waiting_for_an_interactive_one() -> None:
    view = FakeView(1)
    view.running[ENGINE.id] = 1
    flow, registry = control(view, max_queued=1)
    waiting_batch = asyncio.create_task(flow.wait("flood", B, "m", EU))
    await asyncio.sleep(0)
    interactive = asyncio.create_task(flow.wait("ui", HI, "m", EU))
    with pytest.raises(CapacityShed):
        await waiting_batch
    assert metric(registry, "factory_router_flow_shed_total", priority="batch",
                  reason="queue_full") == 1  # fmt: skip
    view.running[ENGINE.id] = 0
    flow.kick()
    await asyncio.wait_for(interactive, 1)
    await flow.close()


async def test_not_saturated_nothing_waiting_is_one_check_and_no_queue() -> None:
    view = FakeView(4)
    flow, _ = control(view)
    from factory_router.policy.policies import Ranked  # noqa: PLC0415
    from factory_router.policy.scoring import ScoreParts  # noqa: PLC0415

    def parts(outstanding: float, capacity: float | None) -> Ranked:
        p = ScoreParts(0, 0, 0, 0, 0, 0, 0, outstanding, capacity, "matrix", "inflight-only")
        return Ranked(ENGINE, p, False)

    assert not flow.must_wait([parts(3, 4)])
    assert not flow.must_wait([parts(9, None)])  # capacity unknown: never full
    assert flow.must_wait([parts(4, 4), parts(8, 8)])
    assert not flow.must_wait([parts(4, 4), parts(7, 8)])  # one candidate with room
    off = FlowControl(FlowConfig(enabled=False), view, lambda m, a: [ENGINE])
    assert not off.must_wait([parts(4, 4)])


async def test_a_request_for_engines_nobody_waits_for_goes_on_past_a_full_queue() -> None:
    """A full queue for one model (or jurisdiction) neither holds nor sheds a request for
    another model whose engine has room; one that shares an engine with the waiters queues."""
    from factory_router.policy.policies import Ranked  # noqa: PLC0415
    from factory_router.policy.scoring import ScoreParts  # noqa: PLC0415

    other = Backend(id="q/a", model="other", pool="q", region="eu-west-1", url="http://y")
    view = FakeView(1)
    view.running[ENGINE.id] = 1  # the model "m" is full; "other" is idle
    flow = FlowControl(
        FlowConfig(enabled=True, poll_seconds=0.01, max_queued=1),
        view,
        lambda model, allowed: [ENGINE] if model == "m" else [other],
        CollectorRegistry(),
    )
    waiting = asyncio.create_task(flow.wait("a", S, "m", EU))
    await asyncio.sleep(0)
    assert flow.scheduler.size == 1

    def room(backend: Backend) -> Ranked:
        parts = ScoreParts(0, 0, 0, 0, 0, 0, 0, 0, 1, "matrix", "inflight-only")
        return Ranked(backend, parts, False)

    assert not flow.must_wait([room(other)])  # nobody waits for its engine: it goes on
    assert flow.must_wait([room(ENGINE)])  # room now, but "a" waits for it: no jumping
    assert flow.must_wait([room(other), room(ENGINE)])
    assert flow.scheduler.size == 1 and not waiting.done()  # nobody was shed
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await flow.close()


async def test_a_client_that_leaves_frees_its_place_and_its_turn() -> None:
    view = FakeView(1)
    view.running[ENGINE.id] = 1
    flow, _ = control(view)
    leaving = asyncio.create_task(flow.wait("a", S, "m", EU))
    staying = asyncio.create_task(flow.wait("b", S, "m", EU))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert flow.scheduler.size == 1
    view.running[ENGINE.id] = 0
    flow.kick()
    await asyncio.wait_for(staying, 1)
    assert flow.scheduler.size == 0
    await flow.close()


async def test_equal_tenants_get_equal_turns_through_the_control() -> None:
    """Two tenants keep 6 and 2 requests waiting on one slot: each end gives the next turn,
    and the tenants alternate (no tenant gets more than its share while the other waits)."""
    view = FakeView(1)
    view.running[ENGINE.id] = 1
    flow, _ = control(view)
    served: list[str] = []

    async def client(name: str) -> None:
        while len(served) < 40:
            await flow.wait(name, S, "m", EU)
            served.append(name)
            view.running[ENGINE.id] += 1
            await asyncio.sleep(0)
            view.running[ENGINE.id] -= 1
            flow.kick()

    tasks = [asyncio.create_task(client("heavy")) for _ in range(6)]
    tasks += [asyncio.create_task(client("light")) for _ in range(2)]
    await asyncio.sleep(0)
    view.running[ENGINE.id] = 0
    flow.kick()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    counts = collections.Counter(served[:40])
    assert abs(counts["heavy"] - counts["light"]) <= 2, counts
    await flow.close()


# Through the proxy (in process: fake engine, the router's HTTP server)


def _flow_tenants() -> dict[str, object]:
    doc = copy.deepcopy(TENANTS_DOC)
    for tenant in doc["tenants"]:
        tenant["priority"] = {"eu-only": "interactive", "global": "batch"}.get(
            tenant["name"], "standard"
        )
    return doc


async def test_through_the_proxy_the_interactive_request_takes_the_next_slot_and_batch_is_shed(
) -> None:  # fmt: skip
    """One engine slot (max_num_seqs 1), held by a batch stream; a second batch request waits;
    an interactive one comes to a full queue (1): the waiting batch request gets 503
    capacity_shed with Retry-After, and the interactive one the slot when the stream ends."""
    cfg = RouterConfig(
        timeouts=Timeouts(first_byte=5.0, grace_period=1.0),
        flow=FlowConfig(enabled=True, max_queued=1, retry_after_seconds=3),
    )
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        engines(1, chunks=10, chunk_delay=0.05) as (eu,),
        router(
            [dataclasses.replace(backend(eu, "eu-a", "eu-west-1"), max_num_seqs=1)],
            config=cfg,
            tenants_doc=_flow_tenants(),
        ) as r,
        httpx.AsyncClient(base_url=r.url, timeout=10) as c,
    ):
        first = asyncio.create_task(
            c.post("/v1/chat/completions", json=body, headers=auth("global"))
        )
        await wait_until(lambda: eu.active == 1, timeout=5, what="the slot taken")
        second = asyncio.create_task(
            c.post("/v1/chat/completions", json=body, headers=auth("global"))
        )
        flow = r.state.flow
        assert flow is not None
        await wait_until(lambda: flow.scheduler.size == 1, timeout=5, what="batch queued")
        assert eu.total == 1  # the waiting request reached no engine
        interactive = asyncio.create_task(
            c.post("/v1/chat/completions", json=body, headers=auth("eu"))
        )
        shed = await asyncio.wait_for(second, 5)
        assert shed.status_code == 503 and shed.headers["retry-after"] == "3"
        assert shed.json()["error"]["code"] == "capacity_shed"
        assert shed.json()["error"]["type"] == "service_unavailable"
        assert not interactive.done()  # waiting: the slot is still the first stream's
        assert (await first).status_code == 200
        assert (await asyncio.wait_for(interactive, 5)).status_code == 200
        assert eu.total == 2
        metrics = await scrape(r)
        assert 'factory_router_flow_shed_total{priority="batch",reason="queue_full"} 1.0' in metrics
        assert 'factory_router_flow_wait_seconds_count{priority="interactive"} 1.0' in metrics
