"""A seeded ShareGPT-like workload (no dataset download needed).

Input and output lengths are log-normal, clipped like vLLM's ShareGPT sampler (drops
prompts or outputs under 4 tokens, prompts over 1024 tokens and pairs over 2048 tokens),
with the log-means tuned so the clipped means equal the published run we compare with:
229.7 input and 203.1 output tokens per request (vLLM PR #18566: 229,711 input and 203,068
output tokens over 1000 ShareGPT prompts). sigma 1.0 (input) and 0.9 (output) give the
heavy tail of conversational lengths; that shape is an assumption, the means are not.
Arrivals are Poisson at the given rate (vLLM bench's default, burstiness 1.0).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from factory_sim.engine.tokenizer import CHARS_PER_TOKEN

INPUT_MEAN, OUTPUT_MEAN = 229.7, 203.1
INPUT_SIGMA, OUTPUT_SIGMA = 1.0, 0.9


@dataclass(frozen=True)
class Item:
    prompt: str
    input_tokens: int
    output_tokens: int
    arrival_s: float


def _pair(rng: random.Random, mu_in: float, mu_out: float) -> tuple[int, int]:
    while True:
        n_in = round(rng.lognormvariate(mu_in, INPUT_SIGMA))
        n_out = round(rng.lognormvariate(mu_out, OUTPUT_SIGMA))
        if n_in >= 4 and n_out >= 4 and n_in <= 1024 and n_in + n_out <= 2048:
            return n_in, n_out


def _tuned_mus(seed: int) -> tuple[float, float]:
    """Log-means whose clipped samples have the target means (a few fixed-point passes)."""
    mu_in, mu_out = math.log(INPUT_MEAN), math.log(OUTPUT_MEAN)
    for _ in range(6):
        rng = random.Random(seed)
        pairs = [_pair(rng, mu_in, mu_out) for _ in range(20_000)]
        mean_in = sum(p[0] for p in pairs) / len(pairs)
        mean_out = sum(p[1] for p in pairs) / len(pairs)
        mu_in += math.log(INPUT_MEAN / mean_in)
        mu_out += math.log(OUTPUT_MEAN / mean_out)
    return mu_in, mu_out


def sharegpt_like(num: int, rate: float, seed: int = 0) -> list[Item]:
    mu_in, mu_out = _tuned_mus(seed)
    rng = random.Random(seed + 1)
    items: list[Item] = []
    clock = 0.0
    for i in range(num):
        n_in, n_out = _pair(rng, mu_in, mu_out)
        if math.isfinite(rate):
            clock += rng.expovariate(rate)
        # Unique leading text so the prefix cache does not help (as with ShareGPT).
        text = f"{i:06d} " + "lorem ipsum dolor sit amet " * (n_in * CHARS_PER_TOKEN // 27 + 1)
        items.append(Item(text[: n_in * CHARS_PER_TOKEN], n_in, n_out, clock))
    return items


def fixed(num: int, input_tokens: int, output_tokens: int) -> list[Item]:
    """``num`` simultaneous requests of fixed lengths (the latency benchmark's shape)."""
    return [
        Item(
            f"{i:04d}" + "x" * (input_tokens * CHARS_PER_TOKEN - 4),
            input_tokens,
            output_tokens,
            0.0,
        )
        for i in range(num)
    ]
