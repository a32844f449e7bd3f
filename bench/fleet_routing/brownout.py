"""Brownouts: a pool whose first bytes arrive late while its engines' own metrics look fine.

The simulator's fault hook `stall_s` holds a request before the engine sees it (the
control API of the region's simulator process, `PUT /engines/{id}/faults`), so the engine's
queue, batch and TTFT histogram stay those of a healthy engine while clients wait: what a
congested network path, an overloaded sidecar or a CPU-throttled API server looks like
from outside. A router that trusts only the engine's self-report keeps sending traffic
there; one that watches what clients see routes around it, within the jurisdiction.

Each brownout scenario stalls one pool's engines for the middle third of the measured run
while another population surges ("a surge elsewhere").
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Brownout:
    name: str
    namespace: str
    factory: str
    pool: str
    region: str
    stall_s: float
    surging: tuple[str, ...]  # stream names whose rate is multiplied meanwhile
    surge: float
    description: str


BROWNOUTS = {
    "fra-h100": Brownout(
        "fra-h100",
        "inference",
        "llama-8b",
        "h100-fra",
        "eu-central-1",
        0.4,
        ("us/us-only/qwen", "us/global/qwen"),
        3.0,
        "eu-central-1's H100 Llama pool +400 ms before the first byte (its metrics stay "
        "healthy) while the US streams surge x3; EU tenants can go to the Inferentia2 pools "
        "of the same region or to eu-west-1",
    ),
    "aps1-l4": Brownout(
        "aps1-l4",
        "inference",
        "qwen-7b",
        "l4-aps1",
        "ap-south-1",
        0.4,
        ("eu/eu-only/llama",),
        3.0,
        "ap-south-1's L4 Qwen pool +400 ms before the first byte while the EU stream surges "
        "x3; the global tenant's Qwen traffic from India can move to us-east-1, the in-only "
        "tenant's cannot (its data stays in IN: it must wait)",
    ),
}


def engine_ids(pods: list[dict[str, Any]], b: Brownout) -> list[str]:
    """The simulator's engine ids (pod uids) of the brownout's pool."""
    return [
        p["metadata"]["uid"]
        for p in pods
        if p["metadata"]["namespace"] == b.namespace
        and p["metadata"].get("labels", {}).get("inference.factory.dev/factory") == b.factory
        and p["metadata"].get("labels", {}).get("inference.factory.dev/pool") == b.pool
    ]


async def apply(control_url: str, ids: list[str], stall_s: float, start: float, end: float) -> int:
    """Stall the engines from `start` to `end` (time.monotonic()); always cleared at the
    end, cancelled or not. Returns how many engines were stalled."""
    stalled = 0
    async with httpx.AsyncClient(base_url=control_url, timeout=10) as http:
        try:
            await asyncio.sleep(max(0.0, start - time.monotonic()))
            for engine in ids:
                reply = await http.put(f"/engines/{engine}/faults", json={"stall_s": stall_s})
                stalled += reply.status_code == 200
            await asyncio.sleep(max(0.0, end - time.monotonic()))
        finally:
            for engine in ids:
                await http.delete(f"/engines/{engine}/faults")
    return stalled
