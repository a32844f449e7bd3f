"""Step-time model: how long one continuous-batching step takes on a profile (pure)."""

from __future__ import annotations

from factory_sim.profiles import AcceleratorProfile


def step_seconds(profile: AcceleratorProfile, scheduled_tokens: int, context_tokens: int) -> float:
    """Duration of one forward pass.

    ``scheduled_tokens``: prefill-chunk tokens plus one per decoding sequence;
    ``context_tokens``: KV-cache tokens that attention reads (sum over the batch).
    """
    return (
        profile.step_base_s
        + profile.per_token_s * scheduled_tokens
        + profile.kv_read_s_per_token * context_tokens
    )


def embedding_seconds(profile: AcceleratorProfile, prompt_tokens: int) -> float:
    """An embedding request: one prefill-only pass over its tokens."""
    return step_seconds(profile, prompt_tokens, prompt_tokens)
