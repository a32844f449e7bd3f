"""`QuotaService`: admit a request against its tenant's quotas, settle it when it ends.

Where the buckets are (`backend`):

- `redis`: shared by every replica (`--quota-redis-url`);
- `local (redis unreachable)`: Redis failed (an error or a timeout, on any call): from that
  call on, each replica keeps its own buckets with each limit divided by the replica count
  (`--quota-replicas`), so the replicas together stay near the tenant's limit. A task
  pings Redis every `retry_interval` and switches back at the first answer. The request
  that met the failure is decided locally at once: a Redis outage is never a 5xx or a hang;
- `local`: no Redis configured; the limits are this replica's alone (divided by the
  replica count all the same).

A tenant without quotas costs nothing here: no bucket, no Redis call. Settling runs in a
task of its own (the answer is not held for it); a settle that Redis refuses is lost
(its reservation stays taken: the error is on the safe side) and opens the circuit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError

from factory_router.metering.usage import Usage
from factory_router.policy.tenants import Tenant
from factory_router.quota.buckets import (
    Bucket,
    Estimate,
    LimitName,
    LocalBuckets,
    Verdict,
    buckets_of,
    estimate,
    exceeded,
    rate_limit_headers,
)
from factory_router.quota.redis_store import RedisBuckets, bucket_key

log = logging.getLogger("factory_router.quota")

Backend = Literal["redis", "local (redis unreachable)", "local"]
_FAILURES = (RedisError, OSError, TimeoutError, ConnectionError)


@dataclass(frozen=True)
class QuotaConfig:
    """Where the quota buckets are and how Redis is asked (one place for the defaults)."""

    redis_url: str | None = None
    replicas: int = 1  # router replicas sharing the tenants' limits (the fallback divides)
    redis_timeout: float = 0.25  # seconds, per Redis call (connect, read, whole script)
    retry_interval: float = 1.0  # seconds between pings while Redis is unreachable
    default_max_tokens: int = 1024  # reserved for a completion that sets no max_tokens
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
            RedisBuckets(config.redis_url, timeout=config.redis_timeout, prefix=config.key_prefix)
            if config.redis_url
            else None
        )
        self._shared = self._redis is not None
        self.last_error: str | None = None
        self._settling: set[asyncio.Task[None]] = set()
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
        self, tenant: Tenant, doc: Mapping[str, Any], body_bytes: int, *, completes: bool
    ) -> Ticket | None:
        """Reserve the request's worst case; None for a tenant without quotas;
        `QuotaExceeded` (429, nothing reserved) when a bucket lacks it."""
        limits = _limits(tenant)
        if not any(limits.values()):
            return None
        est = estimate(doc, body_bytes, completes=completes, default=self.config.default_max_tokens)
        if self._redis is not None and self._shared:
            buckets = buckets_of(limits)
            keys = tuple(bucket_key(self.config.key_prefix, tenant.name, b) for b in buckets)
            costs = [b.cost(est.total) for b in buckets]
            try:
                verdict = await self._redis.take(keys, buckets, costs)
            except _FAILURES as exc:
                self._trip(exc)
            else:
                return self._verdict(
                    tenant,
                    buckets=buckets,
                    keys=keys,
                    costs=costs,
                    est=est,
                    verdict=verdict,
                    shared=True,
                )
        buckets = buckets_of(limits, self.config.replicas)
        keys = tuple(f"{tenant.name}:{b.name}" for b in buckets)
        costs = [b.cost(est.total) for b in buckets]
        verdict = self._local.take(keys, buckets, costs, time.monotonic())
        return self._verdict(
            tenant, buckets=buckets, keys=keys, costs=costs, est=est, verdict=verdict, shared=False
        )

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
    ) -> Ticket:
        if not verdict.admitted:
            scope = "" if shared else " (this router's share)"
            err = exceeded(tenant.name, buckets, verdict, costs, scope=scope)
            self.rejections.labels(tenant.name, err.kind).inc()
            raise err
        headers = rate_limit_headers(buckets, verdict.levels)
        return Ticket(tenant.name, buckets, keys, est, shared, headers)

    def settle(self, ticket: Ticket, actual: int) -> None:
        """The request ended having used `actual` tokens: give back the rest of its
        reservation (or take what it used beyond). Never blocks the caller."""
        delta = ticket.estimate.total - actual
        token_buckets = [(k, b) for k, b in zip(ticket.keys, ticket.buckets, strict=True)
                         if b.kind == "tokens"]  # fmt: skip
        if delta == 0 or not token_buckets:
            return
        if not ticket.shared:
            now = time.monotonic()
            for key, bucket in token_buckets:
                self._local.give(key, bucket, delta, now)
            return
        if self._redis is None or not self._shared:
            return  # Redis is down: this reservation stays taken there
        keys = [k for k, _ in token_buckets]
        buckets = [b for _, b in token_buckets]
        task = asyncio.get_running_loop().create_task(self._give(keys, buckets, delta))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _give(self, keys: list[str], buckets: list[Bucket], delta: int) -> None:
        assert self._redis is not None
        try:
            await self._redis.give(keys, buckets, delta)
        except _FAILURES as exc:
            self._trip(exc)

    def _trip(self, exc: BaseException) -> None:
        self.fallbacks.inc()
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self._shared:
            log.warning("quota: redis unreachable, per-replica limits: %s", self.last_error)
        self._shared = False

    async def run(self) -> None:
        """While Redis is unreachable, ping it every `retry_interval`; at its first answer
        the buckets are shared again (this replica's own are dropped)."""
        if self._redis is None:
            return
        while True:
            await asyncio.sleep(self.config.retry_interval)
            if self._shared:
                continue
            try:
                await self._redis.ping()
            except _FAILURES as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            log.warning("quota: redis reachable again, shared limits")
            self._local.clear()
            self._shared = True
            self.last_error = None

    async def close(self) -> None:
        for task in list(self._settling):
            task.cancel()
        if self._redis is not None:
            await self._redis.close()


def used_tokens(ticket: Ticket, usage: Usage | None) -> int:
    """What a request used, for `settle`: the engine's figures (`factory_router.metering`);
    a prompt it did not report (a stream cut short) counts as estimated; no usage at all
    (no engine answered, or an error answer): nothing."""
    if usage is None:
        return 0
    prompt = ticket.estimate.prompt if usage.prompt_tokens is None else usage.prompt_tokens
    return prompt + usage.completion_tokens
