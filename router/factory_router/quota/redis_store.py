"""The tenants' buckets in a shared Redis: every router replica takes from the same ones.

One Lua script makes each decision atomically in Redis (no two replicas can both take the
last tokens): it refills each bucket from the time it was last written (Redis's own clock,
`TIME`, so the replicas' clocks do not matter), then either takes the request's cost from
every bucket or, when one of them lacks it, takes nothing and answers how long until the
request would fit. Settling gives back (or takes) tokens the same way. A bucket is a hash
`{l: level, t: ms}` whose key expires once it would have refilled (an absent bucket is a
full one): nothing is left behind for a tenant that went away.

A tenant's concurrent requests (the tenants file's `max_concurrent_requests`, when a Redis
is configured) are a sorted set of leases, one per request in flight, scored by expiry: the
same script drops the expired ones, counts the rest against the limit and adds the new
one; settling removes it; its router renews it every third of a lease, so the places of a
router that died come free within one lease.

Keys: `<prefix>{<tenant>}:<limit>`; the tenant in braces is a Redis Cluster hash tag, so
one script's keys share a slot. The limits travel with each call: a reload of the tenants
file applies to the next request, and a lowered limit caps a fuller bucket at once.

Every call is bounded (`timeout`, connect and socket alike, and an `asyncio.timeout`
around it): a Redis that hangs costs a request that much once, then the circuit in
`service` stops asking it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from factory_router.quota.buckets import Bucket, Verdict

# ARGV[1]: "take" or "give"; ARGV[2]: the number of buckets n; then, per bucket key
# (KEYS[1..n]): capacity, refill per ms, cost (take) or the tokens to give back (give;
# negative: take). A key after the buckets, KEYS[n+1], is the tenant's concurrent requests
# (a sorted set of leases scored by their expiry), with ARGV after the buckets' triples:
# the limit, this request's member, the lease in ms (take); the member (give: released).
# Levels are returned as strings (a Lua number returned to Redis loses its fraction).
_SCRIPT = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local mode = ARGV[1]
local n = tonumber(ARGV[2])
local lease_key = KEYS[n + 1]
local extra = 3 + 3 * n
local levels = {}
local wait = 0
for i = 1, n do
  local cap = tonumber(ARGV[3 * i])
  local rate = tonumber(ARGV[3 * i + 1])
  local amount = tonumber(ARGV[3 * i + 2])
  local s = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = tonumber(s[1])
  local at = tonumber(s[2])
  if level == nil or at == nil then
    level = cap
    at = now
  end
  if now > at then
    level = level + (now - at) * rate
  end
  if level > cap then
    level = cap
  end
  levels[i] = level
  if mode == 'take' and amount > level then
    local w = (amount - level) / rate
    if w > wait then
      wait = w
    end
  end
end
local holders = 0
if lease_key and mode == 'take' then
  redis.call('ZREMRANGEBYSCORE', lease_key, '-inf', now)
  holders = redis.call('ZCARD', lease_key)
end
if mode == 'take' and (wait > 0 or (lease_key and holders >= tonumber(ARGV[extra]))) then
  local out = {0, tostring(wait), holders}
  for i = 1, n do
    out[#out + 1] = tostring(levels[i])
  end
  return out
end
local out = {1, '0', holders + 1}
for i = 1, n do
  local cap = tonumber(ARGV[3 * i])
  local rate = tonumber(ARGV[3 * i + 1])
  local amount = tonumber(ARGV[3 * i + 2])
  local level
  if mode == 'take' then
    level = levels[i] - amount
  else
    level = math.min(cap, levels[i] + amount)
  end
  redis.call('HSET', KEYS[i], 'l', tostring(level), 't', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) / rate) + 1000)
  out[#out + 1] = tostring(level)
end
if lease_key then
  if mode == 'take' then
    local lease = tonumber(ARGV[extra + 2])
    redis.call('ZADD', lease_key, now + lease, ARGV[extra + 1])
    redis.call('PEXPIRE', lease_key, lease)
  else
    redis.call('ZREM', lease_key, ARGV[extra])
  end
end
return out
"""

# Leases of the requests in flight, renewed: KEYS[i] with member ARGV[i + 1], ARGV[1]
# the lease in ms; a lease that no replica renews (its router died) expires.
_RENEW = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease)
end
return #KEYS
"""


MAX_CONNECTIONS = 256  # per router replica


@dataclass(frozen=True, slots=True)
class Lease:
    """One request counted among its tenant's concurrent requests (`key`), as `member`,
    for `ms` unless renewed; `limit`: the tenant's."""

    key: str
    member: str
    limit: int
    ms: int


def lease_key(prefix: str, tenant: str) -> str:
    safe = tenant.replace("{", "(").replace("}", ")")
    return f"{prefix}{{{safe}}}:concurrent_requests"


def bucket_key(prefix: str, tenant: str, bucket: Bucket) -> str:
    safe = tenant.replace("{", "(").replace("}", ")")
    return f"{prefix}{{{safe}}}:{bucket.name}"


class RedisBuckets:
    """The buckets in one Redis (a URL: `redis://`, `rediss://`, `unix://`)."""

    def __init__(self, url: str, *, timeout: float, prefix: str = "factory:quota:") -> None:
        self.prefix = prefix
        self.timeout = timeout
        # A request waits for a pooled connection at most `timeout` too: beyond
        # MAX_CONNECTIONS decisions at once, the excess fails over to the local buckets
        # rather than queueing without bound (a plain pool would refuse them at once).
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=0,
        )
        # No retries: a failed call goes to the local buckets at once; the circuit retries.
        self._redis: Redis = Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        self._script = self._redis.register_script(_SCRIPT)
        self._renew = self._redis.register_script(_RENEW)

    async def _run(self, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        async with asyncio.timeout(self.timeout * 2):
            result: list[Any] = await self._script(keys=list(keys), args=list(args))
        return result

    async def take(
        self,
        keys: Sequence[str],
        buckets: Sequence[Bucket],
        costs: Sequence[int],
        lease: Lease | None = None,
    ) -> Verdict:
        """Take every bucket's cost and, with `lease`, one of the tenant's concurrent
        requests; or nothing, when a bucket lacks its cost or the requests are at the limit."""
        args: list[Any] = ["take", len(buckets)]
        for b, c in zip(buckets, costs, strict=True):
            args += [repr(b.capacity), repr(b.per_second / 1000), c]
        all_keys = list(keys)
        if lease is not None:
            all_keys.append(lease.key)
            args += [lease.limit, lease.member, lease.ms]
        out = await self._run(all_keys, args)
        levels = tuple(float(x) for x in out[3:])
        return Verdict(bool(int(out[0])), levels, float(out[1]) / 1000, int(out[2]))

    async def give(
        self, keys: Sequence[str], buckets: Sequence[Bucket], delta: int, lease: Lease | None
    ) -> None:
        """Give `delta` tokens back to the buckets, and release `lease`."""
        args: list[Any] = ["give", len(buckets)]
        for b in buckets:
            args += [repr(b.capacity), repr(b.per_second / 1000), delta]
        all_keys = list(keys)
        if lease is not None:
            all_keys.append(lease.key)
            args.append(lease.member)
        await self._run(all_keys, args)

    async def renew(self, leases: Sequence[Lease], ms: int) -> None:
        if leases:
            async with asyncio.timeout(self.timeout * 2):
                await self._renew(
                    keys=[x.key for x in leases], args=[ms, *[x.member for x in leases]]
                )

    async def ping(self) -> None:
        """Answers or raises; on an answer, every pooled connection is dropped first: those
        opened before an outage would each fail once more (a restarted Redis closed them)."""
        async with asyncio.timeout(self.timeout * 2):
            await self._redis.connection_pool.disconnect()
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()
