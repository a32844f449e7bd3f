"""`QuotaService`: admit a request against its tenant's quotas, settle it when it ends.

Where the buckets are (`backend`):

- `redis`: shared by every replica (`--quota-redis-url`);
- `local (redis unreachable)`: Redis failed (any exception from the store on any call: an
  error, a timeout, a reply of the wrong shape): from that call on, each replica keeps its
  own buckets with each limit divided by the replica count (`--quota-replicas`), so the
  replicas together stay near the tenant's limit. A task probes Redis every
  `retry_interval` by running the quota script itself on a probe key, over a connection of
  its own (a PING would pass on a Redis that refuses or holds scripts: out of memory, an
  ACL, a read-only replica, `CLIENT PAUSE` during a failover), and switches back after
  `recover_probes` good probes in a row, with fresh connections. The request that met the
  failure is decided locally at once: a Redis outage is never a 5xx or a hang. This
  replica's buckets are kept across switches: while Redis governs they are not asked; when
  it fails again they continue from where they were (a flapping Redis cannot refill them);
- `local`: no Redis configured; the limits are this replica's alone (divided by the
  replica count all the same).

A take whose reply is lost (a timeout: Redis may have run it) is undone in the background,
best-effort and once (`redis_store`: the reservation's id is recorded with it): its tokens
go back and its lease is removed at the first good probe, or within `undo_seconds` never
(then its tokens stay taken, on the safe side, and its lease, never renewed, expires
within `lease_seconds`).

With Redis configured, a tenant's `max_concurrent_requests` is shared too: each admitted
request holds a lease in Redis (taken by the same script as the buckets), renewed by this
replica every third of `lease_seconds` and released at settle; in the fallback each
replica counts ceil(limit / replicas) itself.

A tenant without quotas costs nothing here: no bucket, no Redis call. Settling runs in a
task of its own (the answer is not held for it); a settle that Redis refuses is lost
(its reservation stays taken: the error is on the safe side) and opens the circuit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from factory_router.metering.usage import Usage
from factory_router.policy.tenants import Tenant
from factory_router.quota.buckets import (
    PROMPT_BYTES_PER_TOKEN,
    Bucket,
    Estimate,
    LimitName,
    LocalBuckets,
    QuotaExceeded,
    Verdict,
    buckets_of,
    estimate,
    exceeded,
    rate_limit_headers,
)
from factory_router.quota.redis_store import (
    Lease,
    RedisBuckets,
    Reservation,
    bucket_key,
    lease_key,
    records_key,
)

log = logging.getLogger("factory_router.quota")

Backend = Literal["redis", "local (redis unreachable)", "local"]
# Any exception from the store trips the circuit (a reply of the wrong shape as much as a
# refused connection): none may become a 5xx. Cancellation is no failure (BaseException).
_FAILURES: tuple[type[Exception], ...] = (Exception,)
MAX_PENDING_UNDOS = 4096  # beyond: not undone (their tokens stay taken: the safe side)


@dataclass(frozen=True)
class QuotaConfig:
    """Where the quota buckets are and how Redis is asked (one place for the defaults)."""

    redis_url: str | None = None
    replicas: int = 1  # router replicas sharing the tenants' limits (the fallback divides)
    redis_timeout: float = 0.25  # seconds, per Redis call (connect, read, whole script)
    retry_interval: float = 1.0  # seconds between probes while Redis is unreachable
    recover_probes: int = 3  # good probes in a row before Redis governs again
    # Reserved for a chat completion that sets neither max_completion_tokens nor
    # max_tokens, and written into its forwarded body as max_tokens (the engine's own
    # default is the rest of the context, which the router does not know).
    default_max_tokens: int = 1024
    # A request in flight counts among its tenant's concurrent requests (in Redis) for this
    # long unless its router renews it (every third of it): a router that dies frees its
    # tenants' places within a lease.
    lease_seconds: float = 30.0
    # A take whose reply was lost can be undone this long (its record lives as long).
    undo_seconds: float = 30.0
    key_prefix: str = "factory:quota:"


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request's reservation, to settle when its answer ends."""

    tenant: str
    buckets: tuple[Bucket, ...]
    keys: tuple[str, ...]
    estimate: Estimate
    shared: bool  # taken from Redis (else from this replica's buckets)
    headers: Mapping[str, str]
    lease: Lease | None = None  # its place among the tenant's concurrent requests (Redis)
    counted: bool = False  # its place among this replica's share of them (fallback)


def _limits(tenant: Tenant) -> dict[LimitName, int | None]:
    return {
        "requests_per_minute": tenant.requests_per_minute,
        "tokens_per_minute": tenant.tokens_per_minute,
        "tokens_per_day": tenant.tokens_per_day,
    }


class QuotaService:
    def __init__(self, config: QuotaConfig, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self._local = LocalBuckets()
        self._redis = (
            RedisBuckets(
                config.redis_url,
                timeout=config.redis_timeout,
                prefix=config.key_prefix,
                record_seconds=config.undo_seconds,
            )
            if config.redis_url
            else None
        )
        self._shared = self._redis is not None
        self._good_probes = 0  # in a row, while Redis is not governing
        self._undos: list[tuple[float, Reservation]] = []  # (give up at, reservation)
        self.last_error: str | None = None
        self._settling: set[asyncio.Task[None]] = set()
        self._leases: dict[str, Lease] = {}  # member -> lease, renewed while in flight
        self._inflight: dict[str, int] = {}  # tenant -> requests counted in the fallback
        self._member = f"{secrets.token_hex(8)}:{{}}".format
        self._sequence = itertools.count()
        self._up = Gauge(
            "factory_router_quota_redis_up",
            "1 while quotas are shared through Redis; 0 while this replica falls back to its "
            "own share (each limit / --quota-replicas) or has no Redis configured.",
            registry=registry,
        )
        self._up.set_function(lambda: 1.0 if self._shared else 0.0)
        self.rejections = Counter(
            "factory_router_quota_rejections",
            "Requests refused (429) over a tenant's quota, by tenant and limit kind.",
            ["tenant", "kind"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "factory_router_quota_redis_failures",
            "Redis calls that failed and switched quotas to per-replica limits.",
            registry=registry,
        )
        self.undone = Counter(
            "factory_router_quota_undone_reservations",
            "Reservations whose Redis reply was lost, by outcome: undone (given back), "
            "absent (never made), expired (not undone in time: left taken).",
            ["outcome"],
            registry=registry,
        )

    @property
    def backend(self) -> Backend:
        if self._redis is None:
            return "local"
        return "redis" if self._shared else "local (redis unreachable)"

    def status(self, redact: Callable[[str], str]) -> dict[str, Any]:
        """For `/readyz` details; `redact` hides any URL credentials in the error."""
        error = self.last_error
        return {
            "quota_backend": self.backend,
            "quota_replicas": self.config.replicas,
            "quota_last_error": None if error is None else redact(error),
        }

    async def admit(
        self, tenant: Tenant, doc: Mapping[str, Any], body_bytes: int, *, path: str
    ) -> Ticket | None:
        """Reserve the request's worst case (`buckets.estimate`, for the endpoint `path`),
        and its place among the tenant's concurrent requests; None for a tenant without
        quotas; `QuotaExceeded` (429, nothing taken) when a bucket lacks it or the tenant is
        at its concurrent requests; `BadRequest` (400) for a count the engine would refuse.
        When the ticket's `estimate.bound` is set, the caller must forward the body with it
        (`buckets.bound_body`): the engine may generate no more than was reserved."""
        limits = _limits(tenant)
        # Concurrent requests are shared only through Redis; without one, `TenantLimits`
        # (per router) is the whole story, as before quotas.
        concurrent = tenant.max_concurrent_requests if self._redis is not None else None
        if not any(limits.values()) and not concurrent:
            return None
        if tenant.tokens_per_minute or tenant.tokens_per_day:
            est = estimate(doc, body_bytes, path=path, default=self.config.default_max_tokens)
        else:  # no token bucket: the body's counts are the engine's business alone
            est = Estimate(math.ceil(body_bytes / PROMPT_BYTES_PER_TOKEN), 0)
        if self._redis is not None and self._shared:
            buckets = buckets_of(limits)
            keys = tuple(bucket_key(self.config.key_prefix, tenant.name, b) for b in buckets)
            costs = [b.cost(est.total) for b in buckets]
            member = self._member(next(self._sequence))  # the reservation's id
            lease = None
            if concurrent:
                key = lease_key(self.config.key_prefix, tenant.name)
                lease = Lease(key, member, concurrent, self._lease_ms)
            records = records_key(self.config.key_prefix, tenant.name)
            taken = Reservation(member, keys, buckets, tuple(costs), records, lease)
            try:
                verdict = await self._redis.take(taken)
            except _FAILURES as exc:
                self._trip(exc)
                self._undo_later(taken)  # Redis may have run it: undone once it answers
            except BaseException:  # the client left meanwhile: Redis may have run it too
                self._undo_later(taken)
                raise
            else:
                ticket = self._verdict(
                    tenant, buckets=buckets, keys=keys, costs=costs, est=est, verdict=verdict,
                    shared=True, concurrent=concurrent,
                )  # fmt: skip
                if lease is not None:
                    self._leases[lease.member] = lease
                return replace(ticket, lease=lease)
        buckets = buckets_of(limits, self.config.replicas)
        keys = tuple(f"{tenant.name}:{b.name}" for b in buckets)
        costs = [b.cost(est.total) for b in buckets]
        share = math.ceil(concurrent / self.config.replicas) if concurrent else None
        held = self._inflight.get(tenant.name, 0)
        if share is not None and held >= share:
            verdict = Verdict(False, (), 0.0, held)  # at its share: no bucket is asked
        else:
            verdict = self._local.take(keys, buckets, costs, time.monotonic())
        ticket = self._verdict(
            tenant, buckets=buckets, keys=keys, costs=costs, est=est, verdict=verdict,
            shared=False, concurrent=share,
        )  # fmt: skip
        if share is None:
            return ticket
        self._inflight[tenant.name] = held + 1
        return replace(ticket, counted=True)

    def _undo_later(self, taken: Reservation) -> None:
        if len(self._undos) < MAX_PENDING_UNDOS:
            self._undos.append((time.monotonic() + self.config.undo_seconds, taken))
        else:
            self.undone.labels("expired").inc()

    async def _undo_pending(self) -> None:
        """Undo the reservations whose reply was lost, oldest first; stop at the first
        failure (Redis is not answering: the next round tries again)."""
        assert self._redis is not None
        while self._undos:
            give_up_at, taken = self._undos[0]
            if time.monotonic() >= give_up_at:
                self._undos.pop(0)
                self.undone.labels("expired").inc()
                continue
            try:
                given_back = await self._redis.undo(taken)
            except _FAILURES as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                return
            self._undos.pop(0)
            self.undone.labels("undone" if given_back else "absent").inc()

    def _verdict(
        self,
        tenant: Tenant,
        *,
        buckets: tuple[Bucket, ...],
        keys: tuple[str, ...],
        costs: list[int],
        est: Estimate,
        verdict: Verdict,
        shared: bool,
        concurrent: int | None,
    ) -> Ticket:
        if not verdict.admitted:
            scope = "" if shared else " (this router's share)"
            if verdict.wait > 0:
                err = exceeded(tenant.name, buckets, verdict, costs, scope=scope)
            else:  # every bucket held its cost: the concurrent requests were at the limit
                err = QuotaExceeded(
                    f"Tenant {tenant.name!r} has {verdict.holders} requests in flight{scope}, "
                    f"its limit ({concurrent}); retry when one has finished.",
                    kind="requests",
                    retry_after=1,
                    headers=rate_limit_headers(buckets, verdict.levels)
                    if len(verdict.levels) == len(buckets)
                    else {},
                )
            self.rejections.labels(tenant.name, err.kind).inc()
            raise err
        headers = rate_limit_headers(buckets, verdict.levels)
        return Ticket(tenant.name, buckets, keys, est, shared, headers)

    def settle(self, ticket: Ticket, actual: int) -> None:
        """The request ended having used `actual` tokens: give back the rest of its
        reservation (or take what it used beyond), and its place among the tenant's
        concurrent requests. Never blocks the caller."""
        delta = ticket.estimate.total - actual
        token_buckets = [(k, b) for k, b in zip(ticket.keys, ticket.buckets, strict=True)
                         if b.kind == "tokens" and delta]  # fmt: skip
        if not ticket.shared:
            now = time.monotonic()
            for key, bucket in token_buckets:
                self._local.give(key, bucket, delta, now)
            if ticket.counted:
                held = self._inflight.get(ticket.tenant, 0) - 1
                if held > 0:
                    self._inflight[ticket.tenant] = held
                else:
                    self._inflight.pop(ticket.tenant, None)
            return
        if ticket.lease is not None:
            self._leases.pop(ticket.lease.member, None)
        if not token_buckets and ticket.lease is None:
            return
        if self._redis is None or not self._shared:
            return  # Redis is down: its reservation stays taken there, its lease expires
        keys = [k for k, _ in token_buckets]
        buckets = [b for _, b in token_buckets]
        give = self._give(keys, buckets, delta, ticket.lease)
        task = asyncio.get_running_loop().create_task(give)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _give(
        self, keys: list[str], buckets: list[Bucket], delta: int, lease: Lease | None
    ) -> None:
        assert self._redis is not None
        try:
            await self._redis.give(keys, buckets, delta, lease)
        except _FAILURES as exc:
            self._trip(exc)

    def _trip(self, exc: BaseException) -> None:
        self.fallbacks.inc()
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self._shared:
            log.warning("quota: redis unreachable, per-replica limits: %s", self.last_error)
        self._shared = False
        self._good_probes = 0

    async def run(self) -> None:
        """Renew the leases of this replica's requests in flight every third of a lease;
        undo the reservations whose reply was lost; while Redis is not governing, probe it
        every `retry_interval` (the quota script on a probe key, on the probe's own
        connection): after `recover_probes` good probes in a row, the buckets are shared
        again, on fresh connections. This replica's own buckets are kept."""
        if self._redis is None:
            return
        renew_every = self.config.lease_seconds / 3
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(min(self.config.retry_interval, renew_every))
            if self._shared:
                if time.monotonic() - renewed >= renew_every:
                    renewed = time.monotonic()
                    try:
                        await self._redis.renew(list(self._leases.values()), self._lease_ms)
                    except _FAILURES as exc:
                        self._trip(exc)
                if self._undos:
                    await self._undo_pending()
                continue
            try:
                await self._redis.probe()
            except _FAILURES as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                self._good_probes = 0
                continue
            await self._undo_pending()
            self._good_probes += 1
            if self._good_probes < self.config.recover_probes:
                continue
            log.warning("quota: redis answers the quota script again, shared limits")
            self._redis.reconnect()
            self._shared = True
            self._good_probes = 0
            self.last_error = None

    @property
    def _lease_ms(self) -> int:
        return round(self.config.lease_seconds * 1000)

    async def close(self) -> None:
        for task in list(self._settling):
            task.cancel()
        if self._redis is not None:
            await self._redis.close()


def used_tokens(ticket: Ticket, usage: Usage | None, *, unknown: bool = False) -> int:
    """What a request used, for `settle`: the engine's figures (`factory_router.metering`);
    a prompt it did not report (a stream cut short) counts as estimated. No usage: the
    whole reservation when an engine may have worked on it (`unknown`: a 2xx answer whose
    usage could not be read, a client gone before the answer, a first-byte timeout; fail
    closed), else nothing (no engine got it, or it refused it)."""
    if usage is None:
        return ticket.estimate.total if unknown else 0
    prompt = ticket.estimate.prompt if usage.prompt_tokens is None else usage.prompt_tokens
    return prompt + usage.completion_tokens
