"""Engine resolution: merged engine spec, image profile, vLLM arguments and the revision hash.

Which image serves which accelerator (defaults in ``settings``; ``engine.image`` overrides):

- nvidia (any type): ``vllm/vllm-openai``; vLLM listens on 8000, health on ``/health``.
- neuron ``trn2``/``trn3``: the current AWS Neuron vLLM DLC (vLLM Neuron plugin on
  torch.compile). Prefix caching takes vLLM's own flags, ``--block-size`` and
  ``--num-gpu-blocks-override``, and no ``neuron_config`` key (vllm-neuron features guide,
  "Prefix caching"; ``--additional-config '{"neuron_config": {...}}'`` carries only
  Neuron-specific options such as ``ep_degree``); compiled graphs are cached under
  ``$VLLM_CACHE_ROOT/neuron/compile_cache`` (awsdocs-neuron, "Compilation Cache").
- neuron ``inf2``/``trn1``/``trn1n``: the older DLC (vLLM 0.16, vllm-neuron 0.5 on NxD
  Inference). Overrides go through ``--additional-config '{"override_neuron_config": {...}}'``;
  compiled artifacts are saved to and reloaded from ``NEURON_COMPILED_ARTIFACTS`` (vllm-neuron
  0.5.0 README, "Feature Configuration", "Loading pre-compiled models").
- any other Neuron type: no known image, ``engine.image`` is required (NoDefaultImage).

vLLM removed ``--device`` in v0.10: the Neuron plugin is detected by vLLM itself. AWS's DLC
quickstart serves on 8080 (``-p 8080:8080 --port=8080``); the DLC's SageMaker entry point
answers ``/ping``, but the operator runs vLLM's OpenAI server directly, whose health route is
``/health`` (printed in the quickstart's "Available routes"), so probes use ``/health``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from factory_operator.api import EngineArgs, EngineSpec, InferenceFactory, Pool
from factory_operator.api.accelerators import NEURON_CORES_PER_DEVICE
from factory_operator.api.errors import SpecError

from .settings import NEURON_LEGACY_IMAGE, OperatorSettings

NeuronGeneration = Literal["nxdi", "plugin"]
MODEL_MOUNT = "/models"
NEURON_CACHE = "/var/cache/neuron"
# NxD Inference needs a paged ("block") KV layout for prefix caching, with an explicit block
# size shared by vLLM's --block-size and pa_block_size (vllm-neuron 0.5.0 README, prefix
# caching example uses 32).
NEURON_PREFIX_BLOCK = 32


@dataclass(frozen=True)
class EngineProfile:
    """How a given image is run."""

    image: str
    port: int
    health_path: str
    neuron: NeuronGeneration | None


def merge_engine(base: EngineSpec | None, override: EngineSpec | None) -> EngineSpec:
    """pool.engine over spec.engine: args key by key, env by name, the rest replaced."""
    if base is None:
        return override or EngineSpec()
    if override is None:
        return base
    args: dict[str, Any] = {}
    for part in (base.args, override.args):
        if part is not None:
            args.update(part.model_dump(exclude_none=True))
    env = {e.name: e for e in (base.env or [])} | {e.name: e for e in (override.env or [])}
    return EngineSpec(
        image=override.image or base.image,
        args=EngineArgs(**args) if args else None,
        speculative=override.speculative or base.speculative,
        extra_args=override.extra_args if override.extra_args is not None else base.extra_args,
        env=list(env.values()) or None,
    )


def resolve_profile(
    pool: Pool, engine: EngineSpec, settings: OperatorSettings
) -> EngineProfile | None:
    """The image and its conventions, or None when no image is known (NoDefaultImage)."""
    acc = pool.accelerator
    if acc.kind == "nvidia":
        return EngineProfile(engine.image or settings.nvidia_image, 8000, "/health", None)
    image = engine.image or settings.neuron_images.get(acc.type)
    if image is None:
        return None
    legacy = acc.type in {"inf2", "trn1", "trn1n"} or image == NEURON_LEGACY_IMAGE
    return EngineProfile(image, 8080, "/health", "nxdi" if legacy else "plugin")


def tensor_parallel_size(pool: Pool, engine: EngineSpec) -> int:
    """GPUs on NVIDIA; NeuronCores (count x cores per device) on Neuron."""
    acc = pool.accelerator
    wanted = engine.args.tensor_parallel_size if engine.args else None
    if acc.kind == "nvidia":
        expected: int | None = acc.count
    else:
        cores = NEURON_CORES_PER_DEVICE.get(acc.type)
        expected = cores * acc.count if cores else None
    if expected is None:
        if wanted is None:
            raise SpecError(
                f"pool {pool.name}: set engine.args.tensorParallelSize, the "
                f"operator does not know the NeuronCores of {acc.type}",
                field="engine.args.tensorParallelSize",
            )
        return wanted
    if wanted is not None and wanted != expected:
        unit = "GPUs" if acc.kind == "nvidia" else "NeuronCores"
        raise SpecError(
            f"pool {pool.name}: tensorParallelSize {wanted} does not match the "
            f"{expected} {unit} of {acc.count} x {acc.type}",
            field="engine.args.tensorParallelSize",
        )
    return expected


def model_argument(uri: str) -> str:
    """The model `vllm serve` is given (its positional argument) for each URI scheme."""
    scheme, _, rest = uri.partition("://")
    if scheme == "hf":
        return rest
    if scheme == "pvc":
        _, _, path = rest.partition("/")
        return f"{MODEL_MOUNT}/{path}".rstrip("/")
    return uri  # s3:// is read by vLLM's Run:ai streamer itself


def _neuron_config(args: EngineArgs | None) -> dict[str, Any]:
    if args is None or not args.enable_prefix_caching:
        return {}
    config: dict[str, Any] = {
        "is_prefix_caching": True,
        "is_block_kv_layout": True,
        "pa_block_size": NEURON_PREFIX_BLOCK,
    }
    if args.max_model_len and args.max_num_seqs:
        blocks = math.ceil(args.max_model_len / NEURON_PREFIX_BLOCK) * args.max_num_seqs
        config["pa_num_blocks"] = blocks
    return config


def vllm_args(
    factory: InferenceFactory,
    pool: Pool,
    engine: EngineSpec,
    profile: EngineProfile,
    tp: int,
    *,
    shutdown_timeout: int,
) -> list[str]:
    """The arguments of `vllm serve` for this pool, the model first (positional: vLLM 0.32
    warns that `--model` with `vllm serve` will be removed).

    ``shutdown_timeout``: seconds vLLM lets in-flight requests finish after SIGTERM
    (``--shutdown-timeout``, vLLM 0.18+; its default 0 aborts them at once). Not passed to
    the NxD Inference DLC (vLLM 0.16, which does not know the flag), nor when extraArgs set it.
    """
    model = factory.spec.model
    out = [
        model_argument(model.uri),
        "--served-model-name",
        model.name,
        "--host",
        "0.0.0.0",
        "--port",
        str(profile.port),
        "--tensor-parallel-size",
        str(tp),
    ]
    if model.revision and model.uri.startswith("hf://"):
        out += ["--revision", model.revision]
    if model.uri.startswith("s3://"):
        out += ["--load-format", "runai_streamer"]  # docs.vllm.ai "Run:ai Model Streamer"
    args = engine.args
    if args is not None:
        flags: list[tuple[str, object | None]] = [
            ("--max-model-len", args.max_model_len),
            ("--max-num-seqs", args.max_num_seqs),
            ("--max-num-batched-tokens", args.max_num_batched_tokens),
            ("--kv-cache-dtype", args.kv_cache_dtype),
            ("--quantization", args.quantization),
        ]
        if profile.neuron is None:
            flags.append(("--gpu-memory-utilization", args.gpu_memory_utilization))
        out += [item for flag, value in flags if value is not None for item in (flag, str(value))]
    prefix_caching = args.enable_prefix_caching if args is not None else None
    if prefix_caching is None and profile.neuron is not None:
        # vLLM V1 turns prefix caching on by default, and the Neuron plugin then asserts an
        # explicit block size: on Neuron it is off unless asked for (and then configured).
        prefix_caching = False
    if prefix_caching is not None:
        out.append("--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching")
    extra = list(engine.extra_args or [])
    if profile.neuron != "nxdi" and not any(a.startswith("--shutdown-timeout") for a in extra):
        out += ["--shutdown-timeout", str(shutdown_timeout)]
    if profile.neuron is not None:
        out += _neuron_args(args, profile.neuron)
    if engine.speculative is not None:
        spec = engine.speculative.model_dump(exclude_none=True)
        out += ["--speculative-config", json.dumps(spec, sort_keys=True, separators=(",", ":"))]
    return out + extra


def _neuron_args(args: EngineArgs | None, generation: NeuronGeneration) -> list[str]:
    out: list[str] = []
    config = _neuron_config(args)
    if config:
        out += ["--block-size", str(NEURON_PREFIX_BLOCK)]
        if "pa_num_blocks" in config:
            out += ["--num-gpu-blocks-override", str(config["pa_num_blocks"])]
    elif args is not None and args.max_num_seqs and generation == "nxdi":
        # Without prefix caching NxDI uses one contiguous block per sequence and needs the
        # block count pinned to max_num_seqs (vllm-neuron 0.5.0 README, Known Issues 2).
        out += ["--num-gpu-blocks-override", str(args.max_num_seqs)]
    if config and generation == "nxdi":
        out += [
            "--additional-config",
            json.dumps({"override_neuron_config": config}, sort_keys=True, separators=(",", ":")),
        ]
    return out


def revision_hash(
    image: str, uri: str, revision: str | None, args: list[str], env: dict[str, str]
) -> str:
    """Short, stable hash of what a pool runs (the pods' revision label)."""
    payload = json.dumps(
        {"image": image, "uri": uri, "revision": revision, "args": args, "env": env},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:10]
