"""Pure parts: tokenizer approximation, block hashing, LRU prefix cache, profiles."""

from __future__ import annotations

import pytest

from factory_sim.engine.config import EngineConfig, ResolvedLimits
from factory_sim.engine.costs import step_seconds
from factory_sim.engine.kv_cache import KVCache, block_hashes
from factory_sim.engine.tokenizer import count_tokens, encode, render_chat
from factory_sim.profiles import PROFILES, get_profile


def test_tokenizer_is_four_chars_per_token_and_stable() -> None:
    assert count_tokens("") == 0 and count_tokens("abcd") == 1 and count_tokens("abcde") == 2
    assert encode("hello world") == encode("hello world") and len(encode("hello world")) == 3
    shared = render_chat(
        [{"role": "system", "content": "S" * 64}, {"role": "user", "content": "a"}]
    )
    other = render_chat([{"role": "system", "content": "S" * 64}, {"role": "user", "content": "b"}])
    assert encode(shared)[:16] == encode(other)[:16]


def test_block_hashes_chain_prefixes() -> None:
    a, b = list(range(40)), [*range(32), 99, 99, 99]
    ha, hb = block_hashes(a, 16), block_hashes(b, 16)
    assert len(ha) == 2 and ha == hb[:2]
    assert block_hashes([7] * 16 + list(range(16)), 16)[1] != block_hashes(list(range(32)), 16)[1]


def test_prefix_cache_lru_eviction() -> None:
    kv = KVCache(num_blocks=4, block_size=16, enable_prefix_caching=True)
    hashes = block_hashes(list(range(32)), 16)
    blocks = kv.allocate(2, [])
    for block, h in zip(blocks, hashes, strict=True):
        kv.register(block, h)
    kv.free(blocks)
    assert kv.usage == 0.0 and kv.lookup(hashes) == blocks
    shared = kv.lookup(hashes)
    assert kv.can_allocate(2, shared) and not kv.can_allocate(3, shared)
    kv.allocate(2, [])  # the two plain blocks first: the cached ones survive
    assert kv.lookup(hashes) == blocks
    kv.allocate(1, [])  # now the LRU cached block is evicted (the tail block went first)
    assert len(kv.lookup(hashes)) == 1


def test_profiles_and_limits() -> None:
    assert set(PROFILES) == {"h100", "l4", "inf2", "trn1", "cpu-tiny"}
    with pytest.raises(ValueError, match="unknown"):
        get_profile("tpu")
    limits = ResolvedLimits.of(EngineConfig(model_name="m", profile="l4", kv_cache_tokens=800))
    assert limits.num_blocks == 50 and limits.max_model_len == 800 and limits.max_num_seqs == 256
    for profile in PROFILES.values():
        assert profile.max_model_len <= profile.kv_cache_tokens
        assert profile.step_base_s > 0 and profile.sources


def test_cpu_tiny_figures_reproduce_their_calibration() -> None:
    """The fitted step figures give back the measurements they were fitted to (profiles.py)."""
    tiny = get_profile("cpu-tiny")
    # 1 client: a 32-token prefill (the TTFT less the simulator's own ~5 ms), then one
    # decoding sequence per step.
    assert step_seconds(tiny, 32, 0, 32) == pytest.approx(0.0332, rel=0.03)
    assert step_seconds(tiny, 0, 1, 48) == pytest.approx(0.00327, rel=0.03)
    # 8 clients back to back, per request: 32 steps of 8 decoding sequences, 8 prefills.
    cycle = 32 * step_seconds(tiny, 0, 8, 8 * 48) + 8 * step_seconds(tiny, 32, 0, 0)
    cycle -= 8 * tiny.step_base_s  # a prefill rides in a step that is paid for already
    assert cycle == pytest.approx(0.376, rel=0.03)
    limits = ResolvedLimits.of(EngineConfig(model_name="tiny", profile="cpu-tiny"))
    assert limits.max_num_seqs == 128 and limits.max_model_len == 2048
