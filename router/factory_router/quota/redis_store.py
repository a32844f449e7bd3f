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

Keys: `<prefix>{<tenant as UTF-8 hex>}:<limit>`; the braces are a Redis Cluster hash tag,
so one script's keys share a slot, and the hex keeps every name apart (`team{x}` and
`team(x)` once shared their keys) and braces out of the tag. The limits travel with each
call: a reload of the tenants file applies to the next request, and a lowered limit caps a
fuller bucket at once.

A reservation is idempotent and recoverable: each has a unique id (its lease's member
too), and the take script records it (`<tag>:reserved`, a sorted set scored by expiry,
`record_ms`). A call whose reply is lost (a timeout: the script may still have run) is
undone later by `undo`: when the record is there, the costs go back to the buckets and the
lease is removed; when it is not (the take never ran, or not yet), a tombstone makes a take
arriving later do nothing. Either way, once.

Every call is bounded (`timeout`, connect and socket alike, and an `asyncio.timeout`
around it): a Redis that hangs costs a request that much once, then the circuit in
`service` stops asking it. Any reply of the wrong shape is `ReplyError`. The health probe
(`probe`) runs the take script itself on a probe key, over a connection of its own: a
Redis that answers PING but refuses scripts (out of memory, an ACL, a read-only replica)
or holds writes (`CLIENT PAUSE`, a failover) fails it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from factory_router.quota.buckets import Bucket, Verdict

# Settle: give tokens back. KEYS[1..n]: the buckets; KEYS[n+1], when present: the tenant's
# concurrent requests (a sorted set of leases scored by their expiry). ARGV[1]: n; then per
# bucket: capacity, refill per ms, the tokens to give back (negative: take); then, with a
# lease key, the member to release. Levels never rise above capacity.
_GIVE = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local n = tonumber(ARGV[1])
local lease_key = KEYS[n + 1]
for i = 1, n do
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
  level = math.min(cap, math.min(cap, level) + amount)
  redis.call('HSET', KEYS[i], 'l', tostring(level), 't', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) / rate) + 1000)
end
if lease_key then
  redis.call('ZREM', lease_key, ARGV[3 * n + 2])
end
return 1
"""

# Take, recorded. KEYS[1..n]: the buckets; KEYS[n+1]: the tenant's records; KEYS[n+2], when
# present: its leases. ARGV[1]: n; ARGV[2]: the reservation's id; ARGV[3]: a record's life
# in ms; then per bucket: capacity, refill per ms, cost; then, with leases: the limit, the
# lease in ms. Answers {admitted 0|1, wait ms, holders, levels...} (levels as strings).
# A refusal writes nothing; an admission's first write is the buckets' HSET, which a Redis
# over maxmemory refuses (a script that has written once may write on: with a cleanup
# first, an OOM Redis took requests while refusing every settle, and the circuit flapped).
_TAKE = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local n = tonumber(ARGV[1])
local id = ARGV[2]
local record_ms = tonumber(ARGV[3])
local records = KEYS[n + 1]
local lease_key = KEYS[n + 2]
local extra = 4 + 3 * n
if redis.call('ZSCORE', records, '-' .. id) then
  return {0, '0', -1}
end
local levels = {}
local wait = 0
for i = 1, n do
  local cap = tonumber(ARGV[1 + 3 * i])
  local rate = tonumber(ARGV[2 + 3 * i])
  local cost = tonumber(ARGV[3 + 3 * i])
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
  if cost > level then
    local w = (cost - level) / rate
    if w > wait then
      wait = w
    end
  end
end
local holders = 0
if lease_key then
  holders = redis.call('ZCOUNT', lease_key, '(' .. now, '+inf')
end
if wait > 0 or (lease_key and holders >= tonumber(ARGV[extra])) then
  local out = {0, tostring(wait), holders}
  for i = 1, n do
    out[#out + 1] = tostring(levels[i])
  end
  return out
end
local out = {1, '0', holders + 1}
for i = 1, n do
  local cap = tonumber(ARGV[1 + 3 * i])
  local rate = tonumber(ARGV[2 + 3 * i])
  local level = levels[i] - tonumber(ARGV[3 + 3 * i])
  redis.call('HSET', KEYS[i], 'l', tostring(level), 't', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) / rate) + 1000)
  out[#out + 1] = tostring(level)
end
redis.call('ZREMRANGEBYSCORE', records, '-inf', now)
redis.call('ZADD', records, now + record_ms, id)
redis.call('PEXPIRE', records, record_ms)
if lease_key then
  local lease = tonumber(ARGV[extra + 1])
  redis.call('ZREMRANGEBYSCORE', lease_key, '-inf', now)
  redis.call('ZADD', lease_key, now + lease, id)
  redis.call('PEXPIRE', lease_key, lease)
end
return out
"""

# Undo a take whose reply was lost, once: same KEYS and ARGV as `_TAKE` up to the buckets'
# triples. Its record there: the costs go back (never above capacity), the record and the
# lease go; no record: a tombstone ('-' .. id) for a take still to come. Answers 1 if it
# gave back, else 0.
_UNDO = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local n = tonumber(ARGV[1])
local id = ARGV[2]
local record_ms = tonumber(ARGV[3])
local records = KEYS[n + 1]
local lease_key = KEYS[n + 2]
local undone = 0
if redis.call('ZREM', records, id) == 1 then
  undone = 1
  for i = 1, n do
    local cap = tonumber(ARGV[1 + 3 * i])
    local rate = tonumber(ARGV[2 + 3 * i])
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
    level = math.min(cap, level + tonumber(ARGV[3 + 3 * i]))
    redis.call('HSET', KEYS[i], 'l', tostring(level), 't', now)
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) / rate) + 1000)
  end
else
  redis.call('ZADD', records, now + record_ms, '-' .. id)
  if redis.call('PTTL', records) < record_ms then
    redis.call('PEXPIRE', records, record_ms)
  end
end
if lease_key then
  redis.call('ZREM', lease_key, id)
end
return undone
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
_PROBE_TAG = "{probe}"  # no tenant's tag: theirs are hex


class ReplyError(Exception):
    """A script's reply of the wrong shape (a proxy, a broken or foreign server)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One request counted among its tenant's concurrent requests (`key`), as `member`,
    for `ms` unless renewed; `limit`: the tenant's."""

    key: str
    member: str
    limit: int
    ms: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """One take: what `undo` needs when its reply was lost."""

    id: str
    keys: tuple[str, ...]
    buckets: tuple[Bucket, ...]
    costs: tuple[int, ...]
    records: str  # the tenant's records key
    lease: Lease | None


def tenant_tag(prefix: str, tenant: str) -> str:
    """`<prefix>{<hex>}`: one hash tag per tenant, no two names alike, no brace inside."""
    return f"{prefix}{{{tenant.encode('utf-8', 'surrogatepass').hex()}}}"


def lease_key(prefix: str, tenant: str) -> str:
    return f"{tenant_tag(prefix, tenant)}:concurrent_requests"


def records_key(prefix: str, tenant: str) -> str:
    return f"{tenant_tag(prefix, tenant)}:reserved"


def bucket_key(prefix: str, tenant: str, bucket: Bucket) -> str:
    return f"{tenant_tag(prefix, tenant)}:{bucket.name}"


def _client(url: str, timeout: float, connections: int) -> Redis:
    # A request waits for a pooled connection at most `timeout` too: beyond `connections`
    # decisions at once, the excess fails over to the local buckets rather than queueing
    # without bound (a plain pool would refuse them at once).
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=0,
    )
    # No retries: a failed call goes to the local buckets at once; the circuit retries.
    return Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


def _number(value: Any) -> float:
    if isinstance(value, bytes | str):
        number = float(value)
        if math.isfinite(number):
            return number
    raise ReplyError(f"not a number: {value!r:.40}")


def verdict_of(out: Any, n: int) -> Verdict:
    """The take script's reply, checked strictly: `ReplyError` for any other shape."""
    if not isinstance(out, list) or len(out) != 3 + n:
        raise ReplyError(f"take: expected {3 + n} items, got {out!r:.80}")
    admitted, wait, holders = out[0], out[1], out[2]
    if admitted not in (0, 1) or isinstance(admitted, bool) or not isinstance(holders, int):
        raise ReplyError(f"take: malformed reply {out!r:.80}")
    try:
        levels = tuple(_number(x) for x in out[3:])
        waited = _number(wait)
    except ValueError as exc:
        raise ReplyError(f"take: {exc}") from None
    if waited < 0 or holders < 0:
        raise ReplyError(f"take: malformed reply {out!r:.80}")
    return Verdict(bool(admitted), levels, waited / 1000, holders)


class RedisBuckets:
    """The buckets in one Redis (a URL: `redis://`, `rediss://`, `unix://`)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        prefix: str = "factory:quota:",
        record_seconds: float = 30.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.record_ms = max(1, round(record_seconds * 1000))
        self._redis = _client(url, timeout, MAX_CONNECTIONS)
        self._probe_redis = _client(url, timeout, 1)  # the probe's and undo's own
        self._retired: list[Redis] = []  # request clients of before a reconnect
        self._retiring: set[asyncio.Task[None]] = set()
        self._give = self._redis.register_script(_GIVE)
        self._take = self._redis.register_script(_TAKE)
        self._undo = self._redis.register_script(_UNDO)
        self._renew = self._redis.register_script(_RENEW)
        self._probes = 0

    def _take_call(self, r: Reservation) -> tuple[list[str], list[Any]]:
        keys = [*r.keys, r.records]
        args: list[Any] = [len(r.buckets), r.id, self.record_ms]
        for b, c in zip(r.buckets, r.costs, strict=True):
            args += [repr(b.capacity), repr(b.per_second / 1000), c]
        if r.lease is not None:
            keys.append(r.lease.key)
            args += [r.lease.limit, r.lease.ms]
        return keys, args

    async def take(self, r: Reservation) -> Verdict:
        """Take every bucket's cost and, with a lease, one of the tenant's concurrent
        requests; or nothing, when a bucket lacks its cost or the requests are at the limit.
        Any failure raises (`ReplyError` for a reply of the wrong shape): the reservation
        may have been made all the same; `undo` it."""
        keys, args = self._take_call(r)
        async with asyncio.timeout(self.timeout * 2):
            out = await self._take(keys=keys, args=args)
        return verdict_of(out, len(r.buckets))

    async def undo(self, r: Reservation) -> bool:
        """Undo `r` (its reply was lost), on the probe's connection; True if its costs went
        back, False if it had not been made (it never will be now). Raises on failure."""
        keys, args = self._take_call(r)
        if r.lease is not None:
            args = args[: len(args) - 2]
        try:
            async with asyncio.timeout(self.timeout * 2):
                out = await self._undo(keys=keys, args=args, client=self._probe_redis)
        except BaseException:
            await self._probe_redis.connection_pool.disconnect()  # its own: nobody else's
            raise
        if out not in (0, 1) or isinstance(out, bool):
            raise ReplyError(f"undo: malformed reply {out!r:.80}")
        return bool(out)

    async def give(
        self, keys: Sequence[str], buckets: Sequence[Bucket], delta: int, lease: Lease | None
    ) -> None:
        """Give `delta` tokens back to the buckets, and release `lease`."""
        args: list[Any] = [len(buckets)]
        for b in buckets:
            args += [repr(b.capacity), repr(b.per_second / 1000), delta]
        all_keys = list(keys)
        if lease is not None:
            all_keys.append(lease.key)
            args.append(lease.member)
        async with asyncio.timeout(self.timeout * 2):
            await self._give(keys=all_keys, args=args)

    async def renew(self, leases: Sequence[Lease], ms: int) -> None:
        if leases:
            async with asyncio.timeout(self.timeout * 2):
                await self._renew(
                    keys=[x.key for x in leases], args=[ms, *[x.member for x in leases]]
                )

    async def probe(self) -> None:
        """The take script itself, on a probe key and the probe's own connection (never the
        requests' pool): returns when Redis runs it and answers in shape, else raises."""
        self._probes += 1
        tag = f"{self.prefix}{_PROBE_TAG}"
        bucket = Bucket("requests_per_minute", 1.0, 1.0)
        lease = Lease(f"{tag}:concurrent_requests", "", 1 << 30, 1000)
        r = Reservation(
            f"probe:{id(self):x}:{self._probes}", (f"{tag}:{bucket.name}",), (bucket,), (0,),
            f"{tag}:reserved", lease,
        )  # fmt: skip
        keys, args = self._take_call(r)
        try:
            async with asyncio.timeout(self.timeout * 2):
                out = await self._take(keys=keys, args=args, client=self._probe_redis)
            verdict_of(out, 1)
        except BaseException:
            await self._probe_redis.connection_pool.disconnect()  # its own: nobody else's
            raise

    def reconnect(self) -> None:
        """Fresh connections for the requests (those pooled before an outage would each fail
        once more: a restarted Redis closed them); the old pool is closed once every call
        on it has met its deadline."""
        old, self._redis = self._redis, _client(self.url, self.timeout, MAX_CONNECTIONS)
        for script in (self._give, self._take, self._undo, self._renew):
            script.registered_client = self._redis
        self._retired.append(old)

        async def retire() -> None:
            await asyncio.sleep(self.timeout * 2 + 1.0)
            if old in self._retired:
                self._retired.remove(old)
                await _close(old)

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for client in (self._redis, self._probe_redis, *self._retired):
            await _close(client)
        self._retired.clear()


async def _close(client: Redis) -> None:
    await client.aclose()
    await client.connection_pool.disconnect()
