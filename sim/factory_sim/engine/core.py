"""SimEngine: a continuous-batching scheduler on asyncio, timed by an accelerator profile.

One background task runs steps while there is work:

1. admit waiting requests first come, first served, while fewer than ``max_num_seqs`` run
   and the KV cache has blocks for the prompt (prefix-cache hits are shared, not copied);
   the head of the queue blocks the rest, as in vLLM;
2. plan one step: every decoding sequence schedules one token, prefilling sequences take
   chunks of their prompt within ``max_num_batched_tokens`` (chunked prefill);
3. sleep for the step's simulated duration (``costs.step_seconds`` x ``time_scale``);
4. apply it: a sequence whose prefill completes emits its first token, decoding sequences
   emit one; a sequence that needs a new KV block when none is free preempts the most
   recently admitted one (recompute, as vLLM V1 does).

Metrics are recorded in wall-clock time, as a scraper of a real engine would see them.
The config's ``behaviour`` stretches every step (``slow``), draws the requests to fail
(``error_rate``, from a seeded stream), seeds the answers (``answer_seed``) and holds the
engine in loading for ``load_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import random

from factory_sim.engine import costs
from factory_sim.engine.config import EngineConfig, ResolvedLimits
from factory_sim.engine.kv_cache import KVCache, block_hashes
from factory_sim.engine.metrics import EngineMetrics
from factory_sim.engine.sequence import (
    SamplingRequest,
    Sequence,
    TokenEvent,
    sample_output_len,
)
from factory_sim.engine.tokenizer import generate_piece


class SimEngine:
    """The simulated engine behind one served model (one vLLM process)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.profile = config.accelerator
        self.limits = ResolvedLimits.of(config)
        if self.limits.max_model_len > self.limits.num_blocks * self.limits.block_size:
            raise ValueError(
                f"max_model_len {self.limits.max_model_len} exceeds the KV cache "
                f"({self.limits.num_blocks * self.limits.block_size} tokens)"
            )
        self.kv = KVCache(
            self.limits.num_blocks, self.limits.block_size, config.enable_prefix_caching
        )
        self.metrics = EngineMetrics(config.served_model_names[0], self.limits.max_model_len)
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._preemptions = 0
        self._errors = random.Random(f"{config.seed}:{config.name}:errors")
        self._started_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._started_at = loop.time()
            self._task = loop.create_task(self._run(), name="sim-engine")

    @property
    def loading(self) -> bool:
        """Still "loading its model" (``behaviour.load_s``): not serving yet."""
        load_s = self.config.behaviour.load_s * self.config.time_scale
        if load_s <= 0:
            return False
        started = self._started_at
        return started is None or asyncio.get_running_loop().time() - started < load_s

    def draw_error(self) -> int | None:
        """The status to fail the next request with (``behaviour.error_rate``), or None."""
        behaviour = self.config.behaviour
        if behaviour.error_rate > 0 and self._errors.random() < behaviour.error_rate:
            return behaviour.error_status
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for seq in [*self.running, *self.waiting]:
            self._finish(seq, "abort", asyncio.get_running_loop().time())

    # -- requests --------------------------------------------------------------------

    def submit(self, request: SamplingRequest) -> Sequence:
        """Queue a completion; read ``seq.events`` until an event has a finish_reason."""
        number = next(self._ids)
        rng = random.Random(self._answer_seed(request, number))
        seq = Sequence(
            request_id=f"req-{number}",
            request=request,
            rng=rng,
            arrival=asyncio.get_running_loop().time(),
            target_len=sample_output_len(rng, request),
            hashes=block_hashes(request.prompt_ids, self.limits.block_size),
        )
        seq.prefill_target = seq.prompt_len
        self.waiting.append(seq)
        # Gauges are published once per step, as vLLM's scheduler stats are: a request
        # that is admitted at the next step is never seen waiting.
        self._wake.set()
        return seq

    def _answer_seed(self, request: SamplingRequest, number: int) -> int | str:
        """What decides a request's answer: its seed, or for a greedy request its prompt
        (so every engine of one revision answers it alike), each under ``answer_seed``."""
        answers = self.config.behaviour.answer_seed
        if request.seed is not None:
            return f"{answers}:{request.seed}" if answers else request.seed
        if request.greedy:
            prompt = hashlib.sha256(",".join(map(str, request.prompt_ids)).encode()).hexdigest()
            return f"{answers}:greedy:{prompt}"
        return f"{self.config.seed}:{number}"

    def abort(self, seq: Sequence) -> None:
        """The client went away: free the request's slot and KV blocks."""
        if not seq.finished:
            self._finish(seq, "abort", asyncio.get_running_loop().time())
            self._publish()

    async def embed(self, num_tokens: int) -> None:
        """Simulated cost of an embedding request (prefill only, outside the batch)."""
        await asyncio.sleep(costs.embedding_seconds(self.profile, num_tokens) * self._scale)

    @property
    def _scale(self) -> float:
        return self.config.time_scale * self.config.behaviour.slow

    # -- the loop --------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Steps are paced against a simulated clock, not by chained sleeps: a step that the
        # event loop wakes late shortens the next one, so overshoot does not accumulate.
        clock = loop.time()
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()
                continue
            self._admit(loop.time())
            prefill, decode = self._plan()
            if not prefill and not decode:
                # Nothing fits (head request waits for KV space that only frees on finish);
                # cannot happen with an empty running set, so wait for a change.
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()
                continue
            prefill_tokens = sum(n for _, n in prefill)
            context = sum(s.num_computed + n for s, n in prefill) + sum(s.kv_tokens for s in decode)
            step = costs.step_seconds(self.profile, prefill_tokens, len(decode), context)
            clock = max(clock + step * self._scale, loop.time() - step * self._scale)
            await asyncio.sleep(max(0.0, clock - loop.time()))
            self._apply(prefill, decode, loop.time())
            self._publish()

    def _admit(self, now: float) -> None:
        while self.waiting and len(self.running) < self.limits.max_num_seqs:
            seq = self.waiting[0]
            hits = self.kv.lookup(seq.hashes) if seq.generated == 0 else []
            # Like vLLM, always compute at least the last prompt token.
            if hits and len(hits) * self.limits.block_size >= seq.prefill_target:
                hits = hits[:-1]
            needed = -(-seq.prefill_target // self.limits.block_size) - len(hits)
            if not self.kv.can_allocate(needed, hits):
                return
            self.waiting.pop(0)
            seq.blocks = self.kv.allocate(needed, hits)
            seq.num_computed = len(hits) * self.limits.block_size
            seq.num_cached_tokens = seq.num_computed
            if self.config.enable_prefix_caching and seq.generated == 0:
                self.metrics.prefix_queries.inc(seq.prompt_len)
                self.metrics.prefix_hits.inc(seq.num_cached_tokens)
            if seq.scheduled_at is None:
                seq.scheduled_at = now
            self.running.append(seq)

    def _plan(self) -> tuple[list[tuple[Sequence, int]], list[Sequence]]:
        budget = self.limits.max_num_batched_tokens
        decode: list[Sequence] = []
        preempted_before = self._preemptions
        for seq in list(self.running):
            if seq.in_prefill or seq.finished:
                continue
            if self._ensure_block(seq):
                decode.append(seq)
        if self._preemptions != preempted_before:  # rare: drop the preempted ones
            alive = {id(s) for s in self.running}
            decode = [s for s in decode if id(s) in alive]
        budget -= len(decode)
        prefill: list[tuple[Sequence, int]] = []
        for seq in self.running:
            if budget <= 0:
                break
            if seq.in_prefill:
                chunk = min(seq.prefill_target - seq.num_computed, budget)
                prefill.append((seq, chunk))
                budget -= chunk
        return prefill, decode

    def _ensure_block(self, seq: Sequence) -> bool:
        """Room for the next token's KV; preempts the newest sequences if needed."""
        while len(seq.blocks) * self.limits.block_size < seq.kv_tokens:
            block = self.kv.try_allocate_one()
            if block is not None:
                seq.blocks.append(block)
                continue
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.kv.free(seq.blocks)
        seq.blocks = []
        seq.num_computed = 0
        seq.prefill_target = seq.prompt_len + seq.generated  # recompute prompt + output
        self.waiting.insert(0, seq)
        self._preemptions += 1
        self.metrics.preemptions.inc()

    def _apply(
        self, prefill: list[tuple[Sequence, int]], decode: list[Sequence], now: float
    ) -> None:
        for seq, chunk in prefill:
            if seq.finished:
                continue
            seq.num_computed += chunk
            self._register_full_blocks(seq)
            if not seq.in_prefill:
                self._emit(seq, now)
        for seq in decode:
            if not seq.finished:
                self._emit(seq, now)

    def _register_full_blocks(self, seq: Sequence) -> None:
        full = min(seq.num_computed // self.limits.block_size, len(seq.hashes))
        for i in range(full):
            self.kv.register(seq.blocks[i], seq.hashes[i])

    def _emit(self, seq: Sequence, now: float) -> None:
        if seq.generated == 0:
            seq.first_token_at = now
            self.metrics.ttft.observe(now - seq.arrival)
            self.metrics.prompt_tokens.inc(seq.prompt_len)
        elif seq.last_token_at is not None:
            self.metrics.itl.observe(now - seq.last_token_at)
        seq.last_token_at = now
        text = generate_piece(seq.rng, seq.generated)
        seq.generated += 1
        self.metrics.generation_tokens.inc()
        if seq.generated >= seq.target_len:
            reason = "length" if seq.generated >= seq.request.max_tokens else "stop"
            self._finish(seq, reason, now, last_text=text)
        else:
            seq.events.put_nowait(TokenEvent(text))

    def _finish(self, seq: Sequence, reason: str, now: float, last_text: str = "") -> None:
        seq.finished = True
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq.blocks)
        seq.blocks = []
        m = self.metrics
        m.success[reason].inc()
        m.e2e.observe(now - seq.arrival)
        scheduled = seq.scheduled_at if seq.scheduled_at is not None else now
        m.queue_time.observe(scheduled - seq.arrival)
        m.inference_time.observe(now - scheduled)
        first = seq.first_token_at if seq.first_token_at is not None else now
        m.prefill_time.observe(first - scheduled)
        m.decode_time.observe(now - first)
        m.request_prompt_tokens.observe(seq.prompt_len)
        m.request_generation_tokens.observe(seq.generated)
        seq.events.put_nowait(TokenEvent(last_text, finish_reason=reason))
        self._wake.set()

    def _publish(self) -> None:
        self.metrics.running.set(len(self.running))
        self.metrics.waiting.set(len(self.waiting))
        self.metrics.kv_usage.set(self.kv.usage)
