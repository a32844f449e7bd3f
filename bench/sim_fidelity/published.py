"""Published vLLM figures for Llama-3.1-8B(-Instruct) on H100-class GPUs, with sources.

Only figures read from the cited pages are here; nothing is adjusted.
"""

from __future__ import annotations

from typing import Any

REFERENCES: dict[str, dict[str, Any]] = {
    "latency_bs8": {
        "source": "vLLM performance benchmark (Buildkite), test latency_llama8B_tp1 on H100 "
        "(page mirrored at https://buildkite.com/elastic/enterprise-search-ruby/builds/571; "
        "live suite https://buildkite.com/vllm/performance-benchmark)",
        "what": "offline latency: input 32 tokens, output 128 tokens, fixed batch 8; "
        "mean end-to-end latency",
        "mean_e2e_ms": 997.542,
        "median_e2e_ms": 997.365,
        "note": "also used to calibrate the profile's step_base_s, so agreement here is by "
        "construction, not a validation",
    },
    "sharegpt_burst": {
        "source": "vLLM PR #18566 description (mgoin, 2025-05-22), "
        "https://github.com/vllm-project/vllm/pull/18566",
        "what": "vllm serve meta-llama/Llama-3.1-8B-Instruct (defaults); vllm bench serve, "
        "openai-chat endpoint, ShareGPT (Aeala/ShareGPT_Vicuna_unfiltered), 1000 prompts, "
        "request rate inf",
        "gpu": "not stated in the PR text; vLLM maintainers' runs are usually on H100 "
        "(unverified: treat as H100-class)",
        "num_prompts": 1000,
        "total_input_tokens": 229_711,
        "total_output_tokens": 203_068,
        "request_throughput": 32.42,
        "output_throughput": 6582.87,
        "mean_ttft_ms": 9626.13,
        "median_ttft_ms": 9459.70,
        "mean_tpot_ms": 77.86,
        "median_tpot_ms": 48.84,
        "mean_itl_ms": 38.13,
        "median_itl_ms": 25.44,
    },
    "sharegpt_offline_throughput": {
        "source": "vLLM performance benchmark (Buildkite), test throughput_llama8B_tp1 on "
        "H100 (same page as latency_bs8)",
        "what": "offline throughput, 200 ShareGPT prompts, batch chosen by vLLM",
        "request_throughput": 19.5005,
        "note": "offline LLM class of an older vLLM; shows the spread between sources",
    },
}
