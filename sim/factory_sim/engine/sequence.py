"""One request inside the engine: its tokens, KV blocks, progress and output stream."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field

from factory_sim.engine.kv_cache import Block

# When a client sets no max_tokens and does not ask to ignore EOS, the simulated model
# "decides" to stop after a log-normal number of tokens: median 128, sigma 0.9. This is an
# assumption for realism of mixed traffic, not a measured distribution.
DEFAULT_OUTPUT_MEDIAN = 128
DEFAULT_OUTPUT_SIGMA = 0.9


@dataclass(frozen=True)
class TokenEvent:
    """One generated token (``text``), or the end of the stream (``finish_reason``)."""

    text: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class SamplingRequest:
    """What the server asks of the engine for one completion."""

    prompt_ids: list[int]
    max_tokens: int
    ignore_eos: bool = False
    min_tokens: int = 0
    seed: int | None = None
    max_tokens_param: int | None = None
    greedy: bool = False  # temperature 0: the answer depends on the prompt alone


def sample_output_len(rng: random.Random, req: SamplingRequest) -> int:
    """How many tokens the simulated model generates before it stops."""
    if req.ignore_eos:
        return req.max_tokens
    natural = round(rng.lognormvariate(math.log(DEFAULT_OUTPUT_MEDIAN), DEFAULT_OUTPUT_SIGMA))
    return max(1, min(req.max_tokens, max(natural, req.min_tokens)))


@dataclass(eq=False)
class Sequence:
    """Engine-side state of one request."""

    request_id: str
    request: SamplingRequest
    rng: random.Random
    arrival: float
    target_len: int
    hashes: list[int]
    events: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)
    blocks: list[Block] = field(default_factory=list)
    num_computed: int = 0  # tokens whose KV is computed (prompt, then recomputed output)
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache, last admission
    generated: int = 0
    prefill_target: int = 0  # prompt length, or prompt + output after a preemption
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished: bool = False

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < self.prefill_target

    @property
    def kv_tokens(self) -> int:
        """Tokens whose KV the next decode step needs room for."""
        return self.prompt_len + self.generated
