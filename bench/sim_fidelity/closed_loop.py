"""A closed-loop client: N clients, each sending streamed completions back to back.

The same code measures the real engine and the simulator (only the base URL differs), from
the client side as ``run.py`` and ``vllm bench serve`` do: TTFT (request sent -> first
streamed token), ITL (gaps between streamed chunks, as ``vllm bench serve`` counts them),
TPOT (per request: time from the first chunk to the last over the tokens after the first
chunk, so it stays per token when an engine sends several tokens in one chunk),
end-to-end latency, and request and output-token throughput over the measured window.

Every request has a fixed prompt of token ids (so that both engines see exactly the same
number of prompt tokens: the simulator has no tokenizer, the real engine a BPE one) with a
unique head, so the prefix cache never helps, and ``ignore_eos`` with a fixed ``max_tokens``.
Token counts are read from the usage chunk (``stream_options.include_usage``) and checked.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

# One request may take seconds on a busy 2-core machine; minutes means the engine is stuck.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10)
# Token ids 3 .. 1999 are ordinary tokens of the tiny model's 2,000-token vocabulary (0-2
# are bos, eos and pad); the simulator takes any integer.
FIRST_ID, LAST_ID = 3, 1999


@dataclass(frozen=True)
class Shape:
    """One closed-loop workload: how many clients, and the fixed request lengths."""

    clients: int
    input_tokens: int
    output_tokens: int

    @property
    def name(self) -> str:
        return f"c{self.clients}_in{self.input_tokens}_out{self.output_tokens}"


@dataclass
class Sample:
    ttft: float
    itls: list[float]
    e2e: float
    chunks: int  # streamed chunks that carried text (the ITL points)
    first_chunk_tokens: int  # tokens the first of them carried
    prompt_tokens: int
    completion_tokens: int

    @property
    def tpot(self) -> float | None:
        """Seconds per output token after the first chunk (None: all came in one chunk)."""
        rest = self.completion_tokens - self.first_chunk_tokens
        return (self.e2e - self.ttft) / rest if rest > 0 and self.chunks > 1 else None


class PromptSource:
    """Seeded prompts of token ids; the first four ids differ between any two prompts."""

    def __init__(self, seed: int, length: int) -> None:
        self._rng = random.Random(seed)
        self._length = length
        self._count = itertools.count()

    def next(self) -> list[int]:
        n = next(self._count)
        span = LAST_ID - FIRST_ID + 1
        head = [FIRST_ID + (n // span**k) % span for k in range(4)]
        body = [self._rng.randint(FIRST_ID, LAST_ID) for _ in range(self._length - len(head))]
        return (head + body)[: self._length]


async def stream_one(
    http: aiohttp.ClientSession, url: str, model: str, prompt: list[int], output_tokens: int
) -> Sample:
    """One streamed completion; a chunk with non-empty text is one ITL point.

    ``return_token_ids`` makes vLLM name the tokens of every chunk: a busy real engine
    sends several tokens in one chunk when its API server falls behind. The simulator
    ignores the field (one token per chunk).
    """
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }
    start = time.perf_counter()
    stamps: list[float] = []
    first_tokens = 0
    usage: dict[str, Any] = {}
    async with http.post(f"{url}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            now = time.perf_counter()
            chunk = json.loads(line[6:])
            if chunk.get("usage") and not chunk.get("choices"):
                usage = chunk["usage"]
            elif any(c.get("text") for c in chunk.get("choices", [])):
                if not stamps:
                    first_tokens = sum(len(c.get("token_ids") or [0]) for c in chunk["choices"])
                stamps.append(now)
    if not stamps:
        raise RuntimeError(f"{url}: a completion streamed no text")
    itls = [b - a for a, b in itertools.pairwise(stamps)]
    return Sample(
        ttft=stamps[0] - start,
        itls=itls,
        e2e=stamps[-1] - start,
        chunks=len(stamps),
        first_chunk_tokens=first_tokens,
        prompt_tokens=int(usage.get("prompt_tokens", -1)),
        completion_tokens=int(usage.get("completion_tokens", -1)),
    )


async def closed_loop(
    url: str, model: str, shape: Shape, seconds: float, seed: int, warmup: int = 1
) -> dict[str, Any]:
    """``shape.clients`` clients back to back for ``seconds``; a summary of what they saw.

    Each client first sends ``warmup`` requests that are not counted. Requests started
    before the deadline are finished and counted; the window ends with the last of them.
    """
    prompts = PromptSource(seed, shape.input_tokens)
    connector = aiohttp.TCPConnector(limit=shape.clients + 2)
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as http:

        async def one() -> Sample:
            return await stream_one(http, url, model, prompts.next(), shape.output_tokens)

        await asyncio.gather(*(one() for _ in range(shape.clients * warmup)))
        start = time.perf_counter()
        deadline = start + seconds

        async def client() -> list[Sample]:
            done: list[Sample] = []
            while time.perf_counter() < deadline:
                done.append(await one())
            return done

        per_client = await asyncio.gather(*(client() for _ in range(shape.clients)))
        window = time.perf_counter() - start
    return summarise([s for c in per_client for s in c], window, shape)


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {
        "mean": round(statistics.fmean(values) * 1000, 2),
        "median": round(statistics.median(values) * 1000, 2),
        "p99": round(p99 * 1000, 2),
    }


def summarise(samples: list[Sample], window: float, shape: Shape) -> dict[str, Any]:
    itls = [x for s in samples for x in s.itls]
    tpots = [t for t in (s.tpot for s in samples) if t is not None]
    output_tokens = sum(s.completion_tokens for s in samples)
    return {
        "num_requests": len(samples),
        "window_s": round(window, 2),
        "prompt_tokens_seen": sorted({s.prompt_tokens for s in samples}),
        "completion_tokens_seen": sorted({s.completion_tokens for s in samples}),
        "chunks_per_request_mean": round(statistics.fmean(s.chunks for s in samples), 2),
        "first_chunk_tokens_mean": round(
            statistics.fmean(s.first_chunk_tokens for s in samples), 2
        ),
        "request_throughput": round(len(samples) / window, 2),
        "output_throughput": round(output_tokens / window, 1),
        "ttft_ms": _ms([s.ttft for s in samples]),
        "tpot_ms": _ms(tpots),
        "itl_ms": _ms(itls),
        "e2e_ms": _ms([s.e2e for s in samples]),
    }
