"""Step-time model: how long one continuous-batching step takes on a profile (pure)."""

from __future__ import annotations

from factory_sim.profiles import AcceleratorProfile


def step_seconds(
    profile: AcceleratorProfile, prefill_tokens: int, decode_seqs: int, context_tokens: int
) -> float:
    """Duration of one forward pass (see the formula in ``factory_sim.profiles``).

    ``prefill_tokens``: prompt tokens scheduled (chunked prefill); ``decode_seqs``:
    sequences generating one token; ``context_tokens``: KV tokens attention reads.
    """
    return (
        profile.step_base_s
        + profile.prefill_token_s * prefill_tokens
        + profile.decode_token_s * decode_seqs
        + profile.kv_read_s_per_token * context_tokens
    )


def embedding_seconds(profile: AcceleratorProfile, prompt_tokens: int) -> float:
    """An embedding request: one prefill-only pass over its tokens."""
    return step_seconds(profile, prompt_tokens, 0, prompt_tokens)
