"""`factoryctl dev load`: an open-loop workload through the router, to watch the fleet work.

Requests arrive as a Poisson process at `rate` per second for `duration` seconds (then the
generator stops by itself and waits for what is in flight, up to a deadline). Each request
picks a demo tenant and a model the tenant may use; a `shared_prefix` share of prompts start
with a common system prompt, so the engines' prefix caches have something to hit.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import httpx

SYSTEM_PROMPT = (
    "You are the assistant of an inference fleet. Answer briefly and precisely; cite the "
    "region that served you when asked. " * 8
)
TIMEOUT = httpx.Timeout(60.0, connect=5.0)
LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64)


@dataclass
class LoadResult:
    """What the run saw from the client side."""

    sent: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    by_region: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> str:
        ordered = sorted(self.latencies)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0

        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_status.items()))
        regions = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_region.items()))
        return (f"sent {self.sent}; status {statuses or '-'}; served by {regions or '-'}; "
                f"latency p50 {pct(0.5) * 1000:.0f} ms, p99 {pct(0.99) * 1000:.0f} ms")  # fmt: skip


@dataclass(frozen=True)
class Workload:
    """The knobs of one run."""

    router_url: str
    tenants: dict[str, str]  # name -> API key
    models: dict[str, list[str]]  # tenant name -> models it may use
    rate: float
    duration: float
    shared_prefix: float
    max_tokens: int = 64
    stream: bool = True
    seed: int = 0


async def _one(client: httpx.AsyncClient, work: Workload, rng: random.Random,
               result: LoadResult) -> None:  # fmt: skip
    tenant = rng.choice(sorted(work.tenants))
    model = rng.choice(work.models[tenant])
    question = f"Question {rng.randrange(10**6)}: how is the fleet doing in region {tenant}?"
    prefix = SYSTEM_PROMPT if rng.random() < work.shared_prefix else ""
    body = {
        "model": model,
        "messages": [{"role": "system", "content": prefix or "Be brief."},
                     {"role": "user", "content": question}],
        "max_tokens": rng.randint(work.max_tokens // 2, work.max_tokens),
        "stream": work.stream,
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {work.tenants[tenant]}"}
    started = time.monotonic()
    status = 0
    try:
        async with client.stream("POST", f"{work.router_url}/v1/chat/completions",
                                 json=body, headers=headers) as reply:  # fmt: skip
            status = reply.status_code
            region = reply.headers.get("x-factory-region", "-")
            async for _ in reply.aiter_bytes():
                pass
        result.by_region[region] = result.by_region.get(region, 0) + 1
    except httpx.HTTPError:
        status = 599
    result.by_status[status] = result.by_status.get(status, 0) + 1
    if status == 200:
        result.latencies.append(time.monotonic() - started)


async def run(work: Workload) -> LoadResult:
    """Send the workload; return when it is done (in-flight requests get 60 s more)."""
    rng = random.Random(work.seed)
    result = LoadResult()
    tasks: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS) as client:
        deadline = time.monotonic() + work.duration
        next_at = time.monotonic()
        while next_at < deadline:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            task = asyncio.create_task(_one(client, work, rng, result))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            result.sent += 1
            next_at += rng.expovariate(work.rate)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    return result
