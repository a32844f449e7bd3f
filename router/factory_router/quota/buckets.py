"""Quota arithmetic, pure: token buckets, the estimate of a request, the 429, the headers.

Each limit of a tenant is a token bucket (the rate-limiting model of OpenAI's own limits:
capacity = the limit, refilled continuously at limit / period): requests per minute cost 1
per request, tokens per minute and per day cost the request's tokens. Over any interval T
a bucket admits at most `capacity + rate x T`; a request is admitted only when every bucket
of its tenant holds its cost, and then it is taken from all of them at once.

Tokens are not known before an answer ends: a request reserves its worst case, the prompt
estimated from the body (`PROMPT_BYTES_PER_TOKEN` bytes per token) plus what the engine may
generate (`estimate`: its counts read as the engine reads them, times `n` or `best_of`;
when the body sets none, a bound the router writes into the forwarded body, so that the
engine cannot generate more than was reserved), and the answer's actual usage settles it
(`delta = reserved - actual` given back; a prompt bigger than its estimate is taken,
possibly below zero: the next requests wait for it). So what was admitted never exceeds
the limit by more than one estimate.

`LocalBuckets` keeps buckets in memory (the per-replica fallback, each limit divided by the
replica count); `redis_store` keeps the same buckets in Redis with the same arithmetic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from factory_router.policy.errors import BadRequest, TooManyRequests

PROMPT_BYTES_PER_TOKEN = 4  # the usual English average; the settle corrects it
# Counts beyond these are refused (400), not reserved: no model's context holds 2**24
# tokens (the longest, 10M), and OpenAI's API allows `n` up to 128. Bounded counts also keep
# the arithmetic in floats (a 321-digit max_tokens overflowed it: a 500).
MAX_TOKENS = 1 << 24
MAX_N = 128
# The engines' own default of `max_tokens` on /v1/completions (vLLM's and OpenAI's): when a
# body sets none, the router writes it, so that an engine with another default (the rest of
# the context) cannot generate more than was reserved.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
_LAX_INT: TypeAdapter[int] = TypeAdapter(int)  # vLLM's `Optional[int]` fields, lax mode
_MAX_COUNT_CHARS = 64  # a longer string is no count the router needs to parse

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
    """A request's reservation: its prompt, what it may generate, and the bound the
    router writes into the forwarded body (`bound_body`) when the body set none."""

    prompt: int
    completion: int
    bound: tuple[str, int] | None = None  # (field, value) to set on the forwarded body

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def estimate(doc: Mapping[str, Any], body_bytes: int, *, path: str, default: int) -> Estimate:
    """The worst case of a request's tokens: its prompt from the body's size, plus what the
    engine may generate, read as vLLM reads it (pydantic's lax int: `"5000"` and `5000.0`
    are 5000, `5000.5` is refused):

    - `/v1/chat/completions`: `max_completion_tokens`, else `max_tokens`; neither: `default`
      (`--quota-default-max-tokens`), written into the body as `max_tokens`;
    - `/v1/completions`: `max_tokens` only (`max_completion_tokens` is no field of it);
      absent: the engines' default, 16, written into the body;
    - anything else (embeddings): the prompt only;

    times `n`, or `best_of` when larger (every candidate is generated), and on
    `/v1/completions` times the prompts of a batch (`prompt` as a list of strings or of
    token lists: the engine answers each). `BadRequest` (400)
    for a count the engine would refuse (not an integer, below 1) or beyond `MAX_TOKENS` /
    `MAX_N`. (vLLM reads `max_completion_tokens or max_tokens`, so a 0 there falls through
    to `max_tokens`; the router refuses a 0 instead: no reservation is ever read as less
    than the engine may generate.)"""
    prompt = math.ceil(body_bytes / PROMPT_BYTES_PER_TOKEN)
    if path == CHAT_PATH:
        fields: tuple[str, ...] = ("max_completion_tokens", "max_tokens")
        fallback = default
    elif path == COMPLETIONS_PATH:
        fields, fallback = ("max_tokens",), COMPLETIONS_DEFAULT_MAX_TOKENS
    else:
        return Estimate(prompt, 0)
    wanted: int | None = None
    for name in fields:
        wanted = _count(doc, name, MAX_TOKENS)
        if wanted is not None:
            break
    bound = None
    if wanted is None:
        wanted, bound = fallback, ("max_tokens", fallback)
    n = _count(doc, "n", MAX_N) or 1
    best_of = _count(doc, "best_of", MAX_N) or 1
    prompts = _prompts(doc) if path == COMPLETIONS_PATH else 1
    return Estimate(prompt, wanted * max(n, best_of) * prompts, bound)


def _prompts(doc: Mapping[str, Any]) -> int:
    """How many prompts a completions request holds: one string or one token list is one;
    a list of strings or of token lists is a batch, each generated for."""
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return 1


def _count(doc: Mapping[str, Any], name: str, most: int) -> int | None:
    """`doc[name]` as the engine's `Optional[int]` reads it: None when absent or null;
    `BadRequest` when it is no integer, below 1 or above `most`."""
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, str) and len(value) > _MAX_COUNT_CHARS:
        raise BadRequest(f"'{name}' must be an integer from 1 to {most}.", param=name)
    try:
        count = _LAX_INT.validate_python(value, strict=False)
    except ValidationError:
        raise BadRequest(f"'{name}' must be an integer.", param=name) from None
    if not 1 <= count <= most:
        raise BadRequest(f"'{name}' must be an integer from 1 to {most}.", param=name)
    return count


def bound_body(doc: dict[str, Any], bound: tuple[str, int]) -> bytes:
    """The body to forward with `bound` set (`doc` updated in place): the parsed object
    serialized again, UTF-8 as the client sent it (what the engine reads of duplicate keys
    is what `json.loads` read: the last one)."""
    name, value = bound
    doc[name] = value
    try:
        try:
            return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800", which json.loads accepts)
            return json.dumps(doc, separators=(",", ":")).encode()
    except RecursionError:  # nested about as deep as json.loads allows
        raise BadRequest("Request body is nested too deeply.") from None


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
    taken meanwhile), at most the bucket's period."""
    waits = [
        ((c - lv) / b.per_second, b, lv, c)
        for b, lv, c in zip(buckets, verdict.levels, costs, strict=True)
    ]
    wait, bucket, level, cost = max(waits, key=lambda w: w[0])
    # At most the bucket's full refill (its period: a minute, a day): a request larger than
    # the capacity never fits, and a debt (a prompt beyond its estimate) is told again.
    wait = min(wait, bucket.capacity / bucket.per_second)
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
