"""Flow control in the request path: wait while every compliant engine is at capacity, go in
the scheduler's order (`flow.scheduler`), or be shed with 503 `capacity_shed`.

    not saturated, nothing waiting     `must_wait` is False: one look at the plan's own
                                       figures (outstanding vs capacity), no queue
    room, others waiting elsewhere     goes on: nobody waits for its engines (another model,
                                       another jurisdiction), so it jumps no queue
    saturated, or others waiting for   `wait`: queued, then a dispatch pass at once (the
    an engine it could use             request goes on if it is next and has room)
    a slot frees                       `kick` (every attempt's end in the proxy) and a poll
                                       every `FlowConfig.poll_seconds` while anything waits
                                       (other routers' requests end in the snapshot only):
                                       the next entry that has room is woken, one per pass;
                                       no pass (and no request past the queue) until the
                                       woken request has run and taken its slot (its
                                       in-flight count), so one free slot is never given twice
    queue full                         the scheduler's victim is shed (the lowest class
                                       first), `reason="queue_full"`
    waited its class's longest wait    shed, `reason="max_wait"`; never longer

Metrics (the instance's registry): `factory_router_flow_queued_requests{priority}` (waiting
now), `factory_router_flow_enqueued_total{priority}`, `factory_router_flow_shed_total{priority,
reason}`, `factory_router_flow_wait_seconds{priority}` (how long the requests that went on
waited).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from factory_router.flow.saturation import any_room, parts_have_room
from factory_router.flow.scheduler import BANDS, Entry, FlowScheduler
from factory_router.policy.config import FlowConfig
from factory_router.policy.errors import CapacityShed
from factory_router.policy.fleet import Backend
from factory_router.policy.policies import Ranked
from factory_router.policy.scoring import LoadView
from factory_router.policy.tenants import PriorityClass

_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
Candidates = Callable[[str, frozenset[str]], Sequence[Backend]]
_Handle = asyncio.Future[None]


class FlowControl:
    """The flow queue of one router instance. `candidates(model, allowed)`: the backends a
    request could go to now (residency filter and health), fresh at each pass."""

    def __init__(
        self,
        config: FlowConfig,
        view: LoadView,
        candidates: Candidates,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.view = view
        self.candidates = candidates
        self.scheduler: FlowScheduler[_Handle] = FlowScheduler(config.max_queued)
        self._pass_due = False
        # Turns given whose requests have not yet run (nor taken their slot): no other turn
        # is given meanwhile, or one free slot would go twice.
        self._in_transit: dict[_Handle, tuple[str, frozenset[str]]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._max_wait = {
            PriorityClass.INTERACTIVE: config.max_wait_interactive,
            PriorityClass.STANDARD: config.max_wait_standard,
            PriorityClass.BATCH: config.max_wait_batch,
        }
        enqueued = Counter(
            "factory_router_flow_enqueued",
            "Requests that waited in the flow queue (every compliant engine at capacity), "
            "by the tenant's priority class.",
            ["priority"],
            registry=registry,
        )
        shed = Counter(
            "factory_router_flow_shed",
            "Requests shed by the flow queue (503 capacity_shed), by priority class and "
            "reason: queue_full or max_wait.",
            ["priority", "reason"],
            registry=registry,
        )
        waited = Histogram(
            "factory_router_flow_wait_seconds",
            "Time requests waited in the flow queue before going on, by priority class.",
            ["priority"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self._enqueued = {band: enqueued.labels(band.value) for band in BANDS}
        self._shed = {
            (band, reason): shed.labels(band.value, reason)
            for band in BANDS
            for reason in ("queue_full", "max_wait")
        }
        self._waited = {band: waited.labels(band.value) for band in BANDS}
        if registry is not None:
            registry.register(_QueuedCollector(self.scheduler))

    def must_wait(self, ordered: Sequence[Ranked]) -> bool:
        """The request path's one check: no candidate of the plan has room (the plan's own
        figures), or others wait for (or have just been given) a candidate it has too: it
        does not jump their queue. A request whose engines nobody waits for goes on, so a
        full queue for one model or jurisdiction never sheds a request for another that has
        room. Off (`enabled` False): never."""
        if not self.config.enabled:
            return False
        if not any(parts_have_room(r.parts) for r in ordered):
            return True
        if not (self.scheduler.size or self._in_transit):
            return False
        mine = {r.backend.id for r in ordered}
        waiting = {(e.model, e.allowed) for e in self.scheduler.entries()}
        waiting.update(self._in_transit.values())
        return any(
            not mine.isdisjoint(b.id for b in self.candidates(model, allowed))
            for model, allowed in waiting
        )

    async def wait(
        self, tenant: str, priority: PriorityClass, model: str, allowed: frozenset[str]
    ) -> None:
        """Wait for a turn with room; CapacityShed when shed (see the module docstring). The
        caller plans again when this returns: what it planned before is old."""
        handle: _Handle = asyncio.get_running_loop().create_future()
        started = time.monotonic()
        entry = Entry(tenant, priority, model, allowed, started, handle)
        self._enqueued[priority].inc()
        victim = self.scheduler.push(entry)
        if victim is entry:
            raise self._shed_error(entry, "queue_full")
        if victim is not None and not victim.handle.done():
            victim.handle.set_exception(self._shed_error(victim, "queue_full"))
        limit = self._max_wait[priority]
        try:
            self._dispatch()  # it may be next, with room: then it goes on at once
            self._ensure_poller()
            async with asyncio.timeout(limit):
                await handle
        except TimeoutError:
            self._arrived(handle)
            if handle.done() and not handle.cancelled():
                shed = handle.exception()  # shed for a newcomer as the deadline passed
                if shed is not None:
                    raise shed from None
                # else woken as the deadline passed: it has its turn, it goes on
            else:
                self.scheduler.remove(entry)
                raise self._shed_error(entry, "max_wait") from None
        except BaseException:
            self._arrived(handle)  # a turn given and not taken goes to the next
            self.scheduler.remove(entry)
            raise
        else:
            self._arrived(handle)  # the next pass runs once this request took its slot
        self._waited[priority].observe(time.monotonic() - started)

    def kick(self) -> None:
        """A slot may have come free: a dispatch pass soon (coalesced), if anything waits."""
        if self.scheduler.size and not self._pass_due:
            self._pass_due = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _arrived(self, handle: _Handle) -> None:
        """The woken request runs (or left): the next pass may come, once its step (planning,
        taking its slot) is done: call_soon runs after it."""
        if self._in_transit.pop(handle, None) is not None:
            self.kick()

    def _dispatch(self) -> None:
        """Wake the next entry that has room; the next pass runs after it took its slot."""
        self._pass_due = False
        if not self.scheduler.size or self._in_transit:
            return
        room: dict[tuple[str, frozenset[str]], bool] = {}

        def can_go(entry: Entry[_Handle]) -> bool:
            key = (entry.model, entry.allowed)
            known = room.get(key)
            if known is None:
                backends = self.candidates(entry.model, entry.allowed)
                # No candidate left (model gone, all ejected): it goes on to get that error.
                known = room[key] = not backends or any_room(backends, self.view)
            return known

        while (entry := self.scheduler.pop_next(can_go)) is not None:
            if not entry.handle.done():  # else its waiter is leaving: the next one
                entry.handle.set_result(None)
                self._in_transit[entry.handle] = (entry.model, entry.allowed)
                return

    def _ensure_poller(self) -> None:
        if self.scheduler.size and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while self.scheduler.size:
            await asyncio.sleep(self.config.poll_seconds)
            self._dispatch()

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    def _shed_error(self, entry: Entry[_Handle], reason: str) -> CapacityShed:
        self._shed[(entry.priority, reason)].inc()
        retry = self.config.retry_after_seconds
        if reason == "queue_full":
            why = f"the router's queue is full ({self.scheduler.max_queued} requests waiting)"
        else:
            why = f"it waited {self._max_wait[entry.priority]:g}s, its class's longest wait"
        return CapacityShed(
            f"Every engine allowed to serve this request is at capacity and {why} "
            f"(priority class {entry.priority.value}); retry in {retry}s.",
            retry_after=retry,
        )


class _QueuedCollector:
    """`factory_router_flow_queued_requests{priority}`, read at scrape time."""

    def __init__(self, scheduler: FlowScheduler[_Handle]) -> None:
        self._scheduler = scheduler

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "factory_router_flow_queued_requests",
            "Requests waiting now in the flow queue (every compliant engine at capacity), "
            "by the tenant's priority class.",
            labels=("priority",),
        )
        for band in BANDS:
            family.add_metric([band.value], self._scheduler.queued(band))
        yield family
