"""Accelerator profiles: how fast an 8B-class model (Llama-3.1-8B-Instruct, BF16) runs.

(One exception, ``cpu-tiny``: the project's tiny model on a 2-core CPU, fitted to the real
vLLM CPU engine; see its comment.)

The lowest layer of the simulator: plain data, no I/O. Every figure below names its source
in a comment, and says ``derived`` where it is computed from published hardware or model
facts rather than read off a published vLLM measurement. The step-time model that uses
these figures lives in ``factory_sim.engine.costs``.

One engine step (one forward pass of vLLM's continuous batching, chunked prefill on) costs::

    step_s = step_base_s
           + prefill_token_s * (prompt tokens scheduled in the step)
           + decode_token_s  * (sequences decoding one token in the step)
           + kv_read_s_per_token * (context tokens of every sequence in the step)

``step_base_s`` is the floor of one forward pass (streaming 16 GB of weights once, kernel
launches, scheduler overhead); ``prefill_token_s`` is the compute for one prompt token
(compute-bound); ``decode_token_s`` is the marginal cost of one more decoding sequence,
much smaller because decode GEMMs ride on the weight stream already paid for in the base;
``kv_read_s_per_token`` is attention reading the KV cache.

Model facts used throughout (source: meta-llama/Llama-3.1-8B-Instruct model card and
config.json on Hugging Face, https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct):
8.03 B parameters -> 16.06 GB of BF16 weights; 32 layers, 8 KV heads, head dim 128, so one
token of KV cache is 2 (K,V) x 32 x 8 x 128 x 2 bytes = 131,072 bytes (derived); 2 x 8.03 B
= 16 GFLOP per token forward (derived, the usual 2*N rule); context length 131,072.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

ProfileName = Literal["h100", "l4", "inf2", "trn1", "cpu-tiny"]

KV_BYTES_PER_TOKEN = 131_072  # derived from config.json, see the module docstring
WEIGHT_BYTES = 16.06e9  # 8.03 B params x 2 bytes (BF16), model card
FLOP_PER_TOKEN = 16.06e9  # 2 x params, derived


class AcceleratorProfile(BaseModel):
    """Figures for one replica of the model on one accelerator configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ProfileName
    accelerator: str
    devices_per_replica: int
    kv_cache_tokens: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    step_base_s: float
    prefill_token_s: float
    decode_token_s: float
    kv_read_s_per_token: float
    embedding_dim: int = 4096  # Llama-3.1-8B hidden size, config.json
    sources: tuple[str, ...] = ()


H100 = AcceleratorProfile(
    name="h100",
    accelerator="NVIDIA H100 SXM5 80GB (1 GPU, TP=1)",
    devices_per_replica=1,
    # Derived: 80 GiB x 0.9 (vLLM default --gpu-memory-utilization) = 77.3 GB, minus
    # 16.06 GB weights, minus ~3 GB activations/CUDA graphs = ~58 GB / 131,072 B per token.
    kv_cache_tokens=440_000,
    # vLLM defaults for devices with >= 70 GiB that are not A100 (OpenAI API server):
    # max_num_seqs=1024, max_num_batched_tokens=8192. Source: vllm/engine/arg_utils.py,
    # EngineArgs batch defaults ("For GPUs like H100 and MI300x, use larger default values").
    max_num_seqs=1024,
    max_num_batched_tokens=8192,
    max_model_len=131_072,  # Llama-3.1 context length, model card
    # Calibrated: vLLM nightly "latency_llama8B_tp1" on H100 (input 32, output 128,
    # batch 8) reports a mean end-to-end latency of 997.5 ms, i.e. ~7.8 ms per decode step
    # at batch 8 (https://buildkite.com/vllm/performance-benchmark, page mirrored at
    # buildkite.com/elastic/enterprise-search-ruby/builds/571). The physical floor is
    # 16.06 GB / 3.35 TB/s HBM3 = 4.8 ms (H100 SXM datasheet,
    # https://www.nvidia.com/en-us/data-center/h100/); the rest is launch/scheduler overhead.
    step_base_s=0.0075,
    # Derived: 16 GFLOP/token at 989 TFLOPS dense BF16 (datasheet) and ~45% MFU = 36 us.
    prefill_token_s=36e-6,
    # Calibrated: with ~1000 sequences decoding, vLLM PR #18566 (Llama-3.1-8B-Instruct,
    # ShareGPT, 1000 prompts at once; https://github.com/vllm-project/vllm/pull/18566)
    # reports a median inter-token latency of 25.4 ms; 7.5 ms + 1000 x 6 us + ~330k context
    # tokens x 49 ns = 29 ms. (For scale: 16 GFLOP at the full 989 TFLOPS is 16 us.)
    decode_token_s=6e-6,
    # Derived: 131,072 B / 3.35 TB/s at ~80% achieved bandwidth = 49 ns per context token.
    kv_read_s_per_token=49e-9,
    sources=(
        "https://www.nvidia.com/en-us/data-center/h100/",
        "https://buildkite.com/vllm/performance-benchmark",
        "vllm/engine/arg_utils.py (batch defaults)",
    ),
)

L4 = AcceleratorProfile(
    name="l4",
    accelerator="NVIDIA L4 24GB (1 GPU, TP=1)",
    devices_per_replica=1,
    # Derived: 24 GiB x 0.9 = 23.2 GB, minus 16.06 GB weights, minus ~1.5 GB activations =
    # ~5.6 GB / 131,072 B = ~43k tokens. BF16 8B barely fits an L4; most users quantize.
    kv_cache_tokens=43_000,
    # vLLM defaults for devices below 70 GiB: max_num_seqs=256, max_num_batched_tokens=2048
    # (vllm/engine/arg_utils.py, same place as above).
    max_num_seqs=256,
    max_num_batched_tokens=2048,
    # Derived: the 131k default would not fit the KV cache above, so vLLM refuses to start;
    # 16k is a typical --max-model-len for an 8B model on L4.
    max_model_len=16_384,
    # Derived: 16.06 GB / 300 GB/s GDDR6 (NVIDIA L4 datasheet,
    # https://www.nvidia.com/en-us/data-center/l4/) = 53.5 ms, plus ~15% overhead.
    step_base_s=0.0615,
    # Derived: 16 GFLOP/token at 121 TFLOPS dense BF16 (datasheet: 242 with sparsity), 45% MFU.
    prefill_token_s=294e-6,
    # Derived: the H100 profile's decode/prefill ratio (6/36) applied to the L4 prefill cost.
    decode_token_s=49e-6,
    # Derived: 131,072 B / 300 GB/s at ~80% achieved bandwidth.
    kv_read_s_per_token=546e-9,
    sources=("https://www.nvidia.com/en-us/data-center/l4/", "vllm/engine/arg_utils.py"),
)

INF2 = AcceleratorProfile(
    name="inf2",
    accelerator="AWS Inferentia2, 4 devices = 8 NeuronCores (TP=8) of an inf2.48xlarge",
    # Hugging Face optimum-neuron benchmark for Llama-3.1-8B on Inferentia2 compiles the model
    # for 4 devices / 8 cores, batch sizes 1-32, sequence length 4096
    # (https://huggingface.co/docs/optimum-neuron/benchmarks/inferentia-llama3.1-8b).
    devices_per_replica=4,
    # Derived: Neuron continuous batching reserves a full-length KV slot per sequence, so
    # capacity = batch 32 x sequence length 4096 (configuration from the HF page above).
    kv_cache_tokens=32 * 4096,
    max_num_seqs=32,  # largest batch in the HF benchmark above
    max_num_batched_tokens=4096,  # one context-encoding bucket of 4096 tokens (derived)
    max_model_len=4096,  # HF benchmark sequence length
    # Derived: inf2.48xlarge has 12 chips, 384 GB and 9.8 TB/s accelerator memory, 2.3 PFLOPS
    # BF16 (https://aws.amazon.com/ec2/instance-types/inf2/) -> 820 GB/s and ~190 TFLOPS per
    # chip; 4 chips stream the weights in 16.06 GB / 3.28 TB/s = 4.9 ms. We assume ~1/3 of
    # that bandwidth is achieved with TP=8 collectives (an assumption, not a measurement:
    # the HF page publishes its inter-token latency only as a chart).
    step_base_s=0.015,
    # Derived: 16 GFLOP/token on 4 x 190 TFLOPS at ~30% utilisation.
    prefill_token_s=70e-6,
    decode_token_s=12e-6,  # derived: the H100 profile's decode/prefill ratio (6/36)
    # Derived: 131,072 B / 3.28 TB/s at ~1/3 achieved bandwidth.
    kv_read_s_per_token=120e-9,
    sources=(
        "https://huggingface.co/docs/optimum-neuron/benchmarks/inferentia-llama3.1-8b",
        "https://aws.amazon.com/ec2/instance-types/inf2/",
    ),
)

TRN1 = AcceleratorProfile(
    name="trn1",
    accelerator="AWS Trainium1, 4 devices = 8 NeuronCores (TP=8) of a trn1.32xlarge",
    devices_per_replica=4,  # same layout as INF2 above (derived, for comparability)
    kv_cache_tokens=32 * 4096,  # derived as for INF2
    max_num_seqs=32,
    max_num_batched_tokens=4096,
    max_model_len=4096,
    # Derived: trn1.32xlarge has 16 chips, 512 GB and 9.8 TB/s accelerator memory, 3.4
    # PFLOPS BF16 (https://aws.amazon.com/ec2/instance-types/trn1/) -> ~613 GB/s and ~210
    # TFLOPS per chip; 4 chips stream the weights in 16.06 GB / 2.45 TB/s = 6.6 ms, with the
    # same ~1/3 achieved-bandwidth assumption as INF2.
    step_base_s=0.020,
    prefill_token_s=64e-6,  # derived: 16 GFLOP on 4 x 210 TFLOPS at ~30% utilisation
    decode_token_s=11e-6,  # derived: the H100 profile's decode/prefill ratio (6/36)
    kv_read_s_per_token=160e-9,  # derived: 131,072 B / 2.45 TB/s at ~1/3 achieved
    sources=("https://aws.amazon.com/ec2/instance-types/trn1/",),
)

# Not an 8B model: the project's generated tiny model on the pinned vLLM CPU build, so that
# the simulator can stand in for (and be compared with) the real engine of the local fleet.
# Model facts (config.json the project generates, cli/factoryctl/tiny_model.py):
# LlamaForCausalLM, 2 layers, hidden 128, 4 attention = 4 KV heads of dim 32, vocabulary
# 2,000, BF16; one KV token = 2 (K,V) x 2 layers x 4 heads x 32 x 2 bytes = 1,024 bytes
# (derived). On 2 CPU cores its compute is negligible: what costs is vLLM's Python per step
# and per sequence (API server, engine core, worker), so the step figures below are fitted
# to client-side measurements, not derived from hardware.
#
# The calibration: the first full run of bench/sim_fidelity --real-engine (2026-12-03 13:03
# UTC, load average 8-14 on the 2 shared cores; kept as results/real_engine_calibration.md).
# Closed loop of bench/sim_fidelity/closed_loop.py, 32 prompt tokens, 32 output tokens,
# ignore_eos; means of its 2 repeats of the real engine:
#   1 client:  TTFT 38.2 ms; TPOT 3.27 ms per output token
#   8 clients: 681 tok/s, i.e. 376 ms per request per client
# Three equations for three unknowns (per-request prefill cost P = 32 x prefill_token_s):
#   base + P = 33.2 ms       (the TTFT less ~5 ms the simulator adds around a step at 1 client)
#   base + decode = 3.27 ms  (one sequence decoding)
#   32 x (base + 8 x decode) + 8 x P = 376 ms   (8 clients: 32 steps of 8 sequences, and
#                                               each client's prefill stalls everyone once)
# 4 clients were not used to fit; results/real_engine.md (a later run) compares all three
# shapes. A first guess fitted to a shorter probe at 12:55 UTC (load 10-14, when the real
# engine ran 2.5x slower at 8 clients) is what results/real_engine_calibration.md's
# simulated rows show.
CPU_TINY = AcceleratorProfile(
    name="cpu-tiny",
    accelerator="2 x86-64 cores (AVX2), vLLM 0.32 CPU build, the project's tiny model",
    devices_per_replica=1,
    # Measured: vLLM's log with --kv-cache-memory-bytes 268435456 (the integration suite's
    # and the bench's flag): "CPU KV cache size: 262,144 tokens" (= 256 MiB / 1,024 B).
    kv_cache_tokens=262_144,
    # vLLM's CPU defaults for the OpenAI server: max_num_seqs=128, max_num_batched_tokens=
    # 2048 (vllm/engine/arg_utils.py, "cpu specific default values", vLLM 0.32).
    max_num_seqs=128,
    max_num_batched_tokens=2048,
    max_model_len=2048,  # the tiny model's max_position_embeddings (config.json)
    # Fitted (see above): the floor of one step, whatever the batch: vLLM's Python per step.
    step_base_s=0.00313,
    # Fitted (see above): P = 30 ms. Not compute (32 tokens of this model are microseconds
    # of it) but per-request work (the API server's request handling, the engine's
    # admission, on 2 busy cores), spread over the prompt's 32 tokens: it will overcharge
    # long prompts, and it stalls the batch where the real API server works beside it.
    prefill_token_s=940e-6,
    # Fitted (see above): one more decoding sequence costs little next to the step floor.
    decode_token_s=137e-6,
    # Derived, an assumption: 1,024 B per context token at ~10 GB/s (this VM's memory
    # bandwidth was not measured); under 1% of a step at these lengths either way.
    kv_read_s_per_token=1e-7,
    embedding_dim=128,  # the tiny model's hidden size
    sources=(
        "bench/sim_fidelity/results/real_engine.md (calibration probe and comparison)",
        "vllm/engine/arg_utils.py (CPU batch defaults, vLLM 0.32)",
        "vLLM 0.32 serve log (CPU KV cache size)",
    ),
)

PROFILES: dict[str, AcceleratorProfile] = {p.name: p for p in (H100, L4, INF2, TRN1, CPU_TINY)}


def get_profile(name: str) -> AcceleratorProfile:
    """Return the profile called ``name`` (``h100``, ``l4``, ``inf2``, ``trn1``, ``cpu-tiny``)."""
    try:
        return PROFILES[name.lower()]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown accelerator profile {name!r}; known: {known}") from None
