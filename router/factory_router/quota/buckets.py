"""Quota arithmetic, pure: token buckets, the estimate of a request, the 429, the headers.

Each limit of a tenant is a token bucket (the rate-limiting model of OpenAI's own limits:
capacity = the limit, refilled continuously at limit / period): requests per minute cost 1
per request, tokens per minute and per day cost the request's tokens. Over any interval T
a bucket admits at most `capacity + rate x T`; a request is admitted only when every bucket
of its tenant holds its cost, and then it is taken from all of them at once.

Tokens are not known before an answer ends: a request reserves its worst case, the prompt
estimated from the body (`PROMPT_BYTES_PER_TOKEN` bytes per token) plus `max_tokens` (or
`max_completion_tokens`, times `n`; the router's default when absent), and the answer's
actual usage settles it (`delta = reserved - actual` given back; a prompt bigger than its
estimate is taken, possibly below zero: the next requests wait for it). So what was
admitted never exceeds the limit by more than one estimate.

`LocalBuckets` keeps buckets in memory (the per-replica fallback, each limit divided by the
replica count); `redis_store` keeps the same buckets in Redis with the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from factory_router.policy.errors import TooManyRequests

PROMPT_BYTES_PER_TOKEN = 4  # the usual English average; the settle corrects it
MAX_N = 128  # `n` beyond this is the engine's to refuse; the estimate stops there

LimitName = Literal["requests_per_minute", "tokens_per_minute", "tokens_per_day"]
LimitKind = Literal["requests", "tokens"]
_PERIOD: dict[LimitName, tuple[LimitKind, float]] = {
    "requests_per_minute": ("requests", 60.0),
    "tokens_per_minute": ("tokens", 60.0),
    "tokens_per_day": ("tokens", 86400.0),
}
_SHORT: dict[LimitName, str] = {
    "requests_per_minute": "RPM",
    "tokens_per_minute": "TPM",
    "tokens_per_day": "TPD",
}


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit: `capacity` (the limit) refilled at `per_second`."""

    name: LimitName
    capacity: float
    per_second: float

    @property
    def kind(self) -> LimitKind:
        return _PERIOD[self.name][0]

    def cost(self, tokens: int) -> int:
        return 1 if self.kind == "requests" else tokens


def buckets_of(limits: Mapping[LimitName, int | None], divisor: int = 1) -> tuple[Bucket, ...]:
    """The buckets of a tenant's limits (None: no such limit), each divided by `divisor`
    (the replica count, when every replica keeps its own)."""
    out = []
    for name, limit in limits.items():
        if limit:
            capacity = limit / divisor
            out.append(Bucket(name, capacity, capacity / _PERIOD[name][1]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Estimate:
    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def estimate(doc: Mapping[str, Any], body_bytes: int, *, completes: bool, default: int) -> Estimate:
    """The worst case of a request's tokens: its prompt from the body's size, plus what it
    may generate (`max_completion_tokens`, else `max_tokens`, else `default`; times `n`).
    Embeddings (`completes` false) generate nothing."""
    prompt = math.ceil(body_bytes / PROMPT_BYTES_PER_TOKEN)
    if not completes:
        return Estimate(prompt, 0)
    raw = doc.get("max_completion_tokens")
    wanted = _count(doc.get("max_tokens") if raw is None else raw) or default
    n = min(_count(doc.get("n")) or 1, MAX_N)
    return Estimate(prompt, wanted * n)


def _count(value: Any) -> int | None:
    """A positive JSON integer, else None (left for the engine to refuse)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def refill(level: float, since: float, now: float, bucket: Bucket) -> float:
    return min(bucket.capacity, level + max(0.0, now - since) * bucket.per_second)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision over every bucket of a request: admitted or not, the levels after it
    (in the order of the buckets), and how long until the request would fit (seconds)."""

    admitted: bool
    levels: tuple[float, ...]
    wait: float = 0.0
    holders: int = 0  # the tenant's concurrent requests (this one included when admitted)


class LocalBuckets:
    """Buckets of this replica only, by key (tenant and limit); time from the caller."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}  # key -> (level, at)

    def _level(self, key: str, bucket: Bucket, now: float) -> float:
        level, at = self._state.get(key, (bucket.capacity, now))
        return refill(level, at, now, bucket)

    def take(
        self, keys: Sequence[str], buckets: Sequence[Bucket], costs: Sequence[int], now: float
    ) -> Verdict:
        levels = [self._level(k, b, now) for k, b in zip(keys, buckets, strict=True)]
        wait = max(
            ((c - lv) / b.per_second for lv, b, c in zip(levels, buckets, costs, strict=True)),
            default=0.0,
        )
        if wait > 0:
            return Verdict(False, tuple(levels), wait)
        after = [lv - c for lv, c in zip(levels, costs, strict=True)]
        for k, lv in zip(keys, after, strict=True):
            self._state[k] = (lv, now)
        return Verdict(True, tuple(after))

    def give(self, key: str, bucket: Bucket, delta: float, now: float) -> None:
        """Settle: `delta` tokens back (negative: taken), never above the capacity."""
        level = min(bucket.capacity, self._level(key, bucket, now) + delta)
        self._state[key] = (level, now)

    def clear(self) -> None:
        self._state.clear()


def duration(seconds: float) -> str:
    """OpenAI's `x-ratelimit-reset-*` format: `20ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    total_ms = math.ceil(seconds * 1000)
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limit_headers(buckets: Sequence[Bucket], levels: Sequence[float]) -> dict[str, str]:
    """OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`: for tokens, the
    bucket with the least left (per minute or per day)."""
    headers: dict[str, str] = {}
    chosen: dict[LimitKind, tuple[Bucket, float]] = {}
    for bucket, level in zip(buckets, levels, strict=True):
        held = chosen.get(bucket.kind)
        if held is None or level < held[1]:
            chosen[bucket.kind] = (bucket, level)
    for kind, (bucket, level) in sorted(chosen.items()):
        headers[f"x-ratelimit-limit-{kind}"] = str(math.floor(bucket.capacity))
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(level)))
        headers[f"x-ratelimit-reset-{kind}"] = duration(
            (bucket.capacity - level) / bucket.per_second
        )
    return headers


class QuotaExceeded(TooManyRequests):
    """Over a quota: 429 in OpenAI's shape (`type` = the kind of limit, `requests` or
    `tokens`; `code` = `rate_limit_exceeded`), `Retry-After`, and the `x-ratelimit-*`
    headers."""

    def __init__(
        self, message: str, *, kind: LimitKind, retry_after: int, headers: dict[str, str]
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after
        self.headers = headers

    def body(self) -> dict[str, Any]:
        doc = super().body()
        doc["error"]["type"] = self.kind
        return doc


def exceeded(
    tenant: str,
    buckets: Sequence[Bucket],
    verdict: Verdict,
    costs: Sequence[int],
    *,
    scope: str,
) -> QuotaExceeded:
    """The 429 of a refused request: named after the bucket that makes it wait longest;
    `Retry-After` in whole seconds, rounded up (the request fits then, if nothing else is
    taken meanwhile)."""
    waits = [
        ((c - lv) / b.per_second, b, lv, c)
        for b, lv, c in zip(buckets, verdict.levels, costs, strict=True)
    ]
    wait, bucket, level, cost = max(waits, key=lambda w: w[0])
    retry_after = max(1, math.ceil(wait))
    limit = math.floor(bucket.capacity)
    if cost > bucket.capacity:
        message = (
            f"Request too large for {bucket.name.replace('_', ' ')} "
            f"({_SHORT[bucket.name]}) of tenant {tenant!r}{scope}: limit {limit}, "
            f"requested {cost}. Ask for fewer tokens (max_tokens)."
        )
    else:
        message = (
            f"Rate limit reached for tenant {tenant!r}{scope} on "
            f"{bucket.name.replace('_', ' ')} ({_SHORT[bucket.name]}): limit {limit}, "
            f"used {max(0, math.floor(bucket.capacity - level))}, requested {cost}. "
            f"Please try again in {duration(wait)}."
        )
    headers = rate_limit_headers(buckets, verdict.levels)
    return QuotaExceeded(message, kind=bucket.kind, retry_after=retry_after, headers=headers)
