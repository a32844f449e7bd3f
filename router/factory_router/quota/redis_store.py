"""The tenants' buckets in a shared Redis: every router replica takes from the same ones.

One Lua script makes each decision atomically in Redis (no two replicas can both take the
last tokens): it refills each bucket from the time it was last written (Redis's own clock,
`TIME`, so the replicas' clocks do not matter), then either takes the request's cost from
every bucket or, when one of them lacks it, takes nothing and answers how long until the
request would fit. Settling gives back (or takes) tokens the same way. A bucket is a hash
`{l: level, t: ms}` whose key expires once it would have refilled (an absent bucket is a
full one): nothing is left behind for a tenant that went away.

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
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from factory_router.quota.buckets import Bucket, Verdict

# ARGV[1]: "take" or "give"; then, per key: capacity, refill per ms, cost (take) or the
# tokens to give back (give; negative: take). Levels are returned as strings (a Lua number
# returned to Redis loses its fraction).
_SCRIPT = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local mode = ARGV[1]
local levels = {}
local wait = 0
for i = 1, #KEYS do
  local cap = tonumber(ARGV[3 * i - 1])
  local rate = tonumber(ARGV[3 * i])
  local amount = tonumber(ARGV[3 * i + 1])
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
if mode == 'take' and wait > 0 then
  local out = {0, tostring(wait)}
  for i = 1, #KEYS do
    out[#out + 1] = tostring(levels[i])
  end
  return out
end
local out = {1, '0'}
for i = 1, #KEYS do
  local cap = tonumber(ARGV[3 * i - 1])
  local rate = tonumber(ARGV[3 * i])
  local amount = tonumber(ARGV[3 * i + 1])
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
return out
"""


MAX_CONNECTIONS = 256  # per router replica


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

    async def _run(self, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        async with asyncio.timeout(self.timeout * 2):
            result: list[Any] = await self._script(keys=list(keys), args=list(args))
        return result

    async def take(
        self, keys: Sequence[str], buckets: Sequence[Bucket], costs: Sequence[int]
    ) -> Verdict:
        args: list[Any] = ["take"]
        for b, c in zip(buckets, costs, strict=True):
            args += [repr(b.capacity), repr(b.per_second / 1000), c]
        out = await self._run(keys, args)
        levels = tuple(float(x) for x in out[2:])
        return Verdict(bool(int(out[0])), levels, float(out[1]) / 1000)

    async def give(self, keys: Sequence[str], buckets: Sequence[Bucket], delta: int) -> None:
        args: list[Any] = ["give"]
        for b in buckets:
            args += [repr(b.capacity), repr(b.per_second / 1000), delta]
        await self._run(keys, args)

    async def ping(self) -> None:
        """Answers or raises; on an answer, every pooled connection is dropped first: those
        opened before an outage would each fail once more (a restarted Redis closed them)."""
        async with asyncio.timeout(self.timeout * 2):
            await self._redis.connection_pool.disconnect()
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()
