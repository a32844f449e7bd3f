"""EngineConfig: everything one simulated engine needs, validated once (pydantic).

Defaults come from the accelerator profile (``factory_sim.profiles``); any field left at
``None`` takes the profile's value, so ``EngineConfig(model_name="m", profile="l4")`` is a
complete configuration. ``time_scale`` multiplies every simulated duration (1.0 = real
time; tests use a small value to run fast, benchmarks a large one to leave CPU headroom).
``behaviour`` lets one engine play a bad revision (slower, erroring, answering otherwise,
slow to load); its defaults are a healthy engine.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from factory_sim.profiles import AcceleratorProfile, ProfileName, get_profile

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class Behaviour(BaseModel):
    """How an engine departs from a healthy one, so that a canary can be judged on it.

    Answers are deterministic per revision: a greedy request (temperature 0) gets the same
    text for the same prompt on every engine with the same ``answer_seed``, and a different
    text (and length) under another seed; a request with a ``seed`` likewise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    slow: float = Field(
        default=1.0, ge=1.0, le=100.0, description="every step and embedding takes this x longer"
    )
    error_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="share of requests answered error_status"
    )
    error_status: int = Field(default=500, ge=400, le=599)
    answer_seed: str = Field(
        default="", max_length=128, description='"": the model\'s own answers; else others'
    )
    load_s: float = Field(
        default=0.0, ge=0.0, le=3600.0, description="/health and /v1 answer 503 until loaded"
    )


class EngineConfig(BaseModel):
    """One simulated vLLM engine (one pod's worth of `vllm serve`)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str | list[str] = Field(
        description="Served model name(s), like vLLM --served-model-name; the first one "
        "is the metrics label."
    )
    profile: ProfileName = "h100"
    region: str = "local"
    rtt_ms: dict[str, float] = Field(
        default_factory=dict, description="caller region -> round trip in ms"
    )
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=16)
    max_num_batched_tokens: int | None = Field(default=None, ge=16)
    kv_cache_tokens: int | None = Field(default=None, ge=16)
    enable_prefix_caching: bool = True  # vLLM V1 default
    block_size: int = Field(default=16, ge=1)  # vLLM default KV block size on CUDA
    seed: int = 0
    time_scale: float = Field(default=1.0, gt=0.0)
    port: int = Field(default=0, ge=0, le=65535)
    host: str = "127.0.0.1"
    name: str | None = Field(default=None, description="engine id; generated when absent")
    labels: dict[str, str] = Field(default_factory=dict, description="informational")
    behaviour: Behaviour = Field(default_factory=Behaviour)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        if value not in LOOPBACK_HOSTS:
            raise ValueError(f"simulated engines listen on loopback only, not {value!r}")
        return value

    @field_validator("model_name")
    @classmethod
    def _names_not_empty(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or any(not n for n in names):
            raise ValueError("model_name must name at least one non-empty model")
        return value

    @property
    def served_model_names(self) -> list[str]:
        return [self.model_name] if isinstance(self.model_name, str) else list(self.model_name)

    @property
    def accelerator(self) -> AcceleratorProfile:
        return get_profile(self.profile)


class ResolvedLimits(BaseModel):
    """The engine's effective limits: config overrides merged over the profile."""

    model_config = ConfigDict(frozen=True)

    max_num_seqs: int
    max_model_len: int
    max_num_batched_tokens: int
    num_blocks: int
    block_size: int

    @classmethod
    def of(cls, config: EngineConfig) -> ResolvedLimits:
        prof = config.accelerator
        kv_tokens = config.kv_cache_tokens or prof.kv_cache_tokens
        max_model_len = config.max_model_len or min(prof.max_model_len, kv_tokens)
        return cls(
            max_num_seqs=config.max_num_seqs or prof.max_num_seqs,
            max_model_len=max_model_len,
            max_num_batched_tokens=config.max_num_batched_tokens or prof.max_num_batched_tokens,
            num_blocks=max(1, kv_tokens // config.block_size),
            block_size=config.block_size,
        )
