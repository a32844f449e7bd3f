"""The real engine's command line: the pod's own `vllm serve`, with what a CPU machine forces.

`command_line` takes the engine container the operator generated and returns what the local
fleet runs for it, and the list of every change it made. Every kind of change is in
`SUBSTITUTIONS` (what and why) and nowhere else; everything else the operator wrote is passed
unchanged, so a flag or value vLLM refuses fails here as it would on a GPU node.

A pod's spec is not trusted with the host: the local fleet runs engines as processes of this
machine, not in containers, so environment variables that make a program load other code
(`LOADER_ENV`: PYTHONPATH, LD_PRELOAD, ...) and paths that leave the engine's folder make the
pod `NotServable` (an Event says why), and the engine starts from a clean environment (`BASE_ENV`
of the agent's, plus the pod's own values), not the agent's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KV_CACHE_BYTES = 256 * 2**20
# vLLM's CPU backend has one device per NUMA node; this kind of machine has one.
CPU_TENSOR_PARALLEL = 1

# Every substitution, and why: the one place that says what differs from the pod's spec.
SUBSTITUTIONS: dict[str, str] = {
    "executable": "the image's `vllm` is the pinned CPU environment's: no image runs here",
    "model": "no weights can be downloaded here; the tiny model stands in for the pod's model",
    "--host": "servers started on this machine listen on 127.0.0.1 only",
    "--port": "every engine shares this machine's network; a free port instead",
    "--tensor-parallel-size": "vLLM's CPU backend runs one device per NUMA node; here, one "
    "(also written -tp or abbreviated)",
    "--gpu-memory-utilization": "dropped: a GPU memory fraction; on CPU the KV cache is sized "
    "in bytes",
    "--max-model-len": "the tiny model's context is 2048 tokens; larger values are cut to it",
    "--load-format": "dropped: it names how the pod's model is read (e.g. the Run:ai streamer "
    "for s3://); the tiny model is local safetensors",
    "--revision": "dropped: a revision of the pod's model on the Hub; the tiny model has none",
    "--speculative-config": "dropped: it names a draft model, which cannot be downloaded here",
    "--kv-cache-memory-bytes": "added when the pod does not set it: vLLM's CPU default (92% "
    "of memory) refuses to start on a shared machine",
    "--enforce-eager": "added unless the pod sets --enforce-eager or --no-enforce-eager: no "
    "torch.compile, about 60 s less to start on 2 cores",
    "env valueFrom / envFrom": "dropped: Secrets and ConfigMaps do not exist on this machine",
    "env under a volume mount": "the pod's volumes are folders of the engine here",
    "ENGINE_ENV": "vLLM's and Hugging Face's caches and temporary files stay in the engine's "
    "folder (unless the pod sets them)",
    "FIXED_ENV": "nothing is fetched from the Hub or reported: HF_HUB_OFFLINE=1 and no usage "
    "statistics, whatever the pod says",
}
REPLACED = ("--host", "--port", "--tensor-parallel-size", "--max-model-len")
DROPPED = ("--gpu-memory-utilization", "--load-format", "--revision", "--speculative-config")
ALIASES = {"-tp": "--tensor-parallel-size"}
# The environment every real engine gets, paths relative to its folder. (TMPDIR is not
# there: vLLM binds its processes' ZeroMQ sockets in it, and a Unix socket path has at most
# 107 bytes, so it is a short folder of the system's temporary directory: `short_tmp`.)
ENGINE_ENV = {
    "HF_HOME": "hf",
    "VLLM_CACHE_ROOT": "vllm-cache",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
}
FIXED_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1"}
# What the engine inherits from the agent: enough to run, nothing that steers it.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER")
# Variables that make a program load code of the pod's choosing: on a node they act inside
# the pod's container; here they would act on this machine.
LOADER_ENV = frozenset({
    "PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONEXECUTABLE",
    "PYTHONSAFEPATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "BASH_ENV", "ENV",
})  # fmt: skip


class NotServable(ValueError):
    """The pod's engine container is not something the local fleet will run, and why."""


@dataclass(frozen=True)
class RealEngineSetup:
    """What the real engines run with: the pinned vLLM and the tiny model."""

    vllm: Path
    model: Path
    max_model_len: int
    work: Path  # one folder per engine below it


@dataclass(frozen=True)
class Launch:
    """A command line to run, its whole environment, and the substitutions made."""

    argv: list[str]
    env: dict[str, str]
    substitutions: list[str]


def _split_equals(args: list[str]) -> list[str]:
    out: list[str] = []
    for arg in args:
        if arg.startswith("-") and "=" in arg:
            out += arg.split("=", 1)
        else:
            out.append(arg)
    return out


def _canonical(arg: str) -> str:
    """The flag `arg` means among those substituted: an alias, or an unambiguous prefix
    (argparse, and so vLLM, accepts abbreviations); else `arg` itself."""
    if arg in ALIASES:
        return ALIASES[arg]
    if not arg.startswith("--") or arg in REPLACED or arg in DROPPED:
        return arg
    known = [flag for flag in (*REPLACED, *DROPPED) if flag.startswith(arg)]
    return known[0] if len(known) == 1 and len(arg) > len("--") + 2 else arg


def command_line(
    container: dict[str, Any], setup: RealEngineSetup, port: int, folder: Path
) -> Launch:
    """The real engine's command line and environment for one pod's engine container.

    Raises NotServable when the container does not run `vllm serve <model>`, or its
    environment would act on this machine (see the module docstring)."""
    command = list(container.get("command") or [])
    args = _split_equals(list(container.get("args") or []))
    if command != ["vllm", "serve"]:
        raise NotServable(f"the engine container runs {command!r}, not ['vllm', 'serve']")
    if not args or args[0].startswith("-"):
        raise NotServable("`vllm serve` is given no model (its first argument)")
    made = [f"executable: vllm -> {setup.vllm}", f"model: {args[0]} -> {setup.model}"]
    replaced: dict[str, Callable[[str], str]] = {
        "--host": lambda _v: "127.0.0.1",
        "--port": lambda _v: str(port),
        "--tensor-parallel-size": lambda _v: str(CPU_TENSOR_PARALLEL),
        "--max-model-len": lambda v: _capped_tokens(v, setup.max_model_len),
    }
    rest, out, index = args[1:], [], 0
    while index < len(rest):
        arg, flag = rest[index], _canonical(rest[index])
        value = rest[index + 1] if index + 1 < len(rest) else ""
        takes_value = bool(value) and not value.startswith("--")
        if flag in DROPPED:
            made.append(f"{arg}{' ' + value if takes_value else ''}: dropped")
            index += 2 if takes_value else 1
            continue
        if flag in replaced and takes_value:
            now = replaced[flag](value)
            if (flag, now) != (arg, value):
                made.append(f"{arg} {value} -> {flag} {now}")
            out += [flag, now]
            index += 2
            continue
        out.append(arg)
        index += 1
    added = [("--host", "127.0.0.1"), ("--port", str(port))]
    if "--kv-cache-memory-bytes" not in out:
        added.append(("--kv-cache-memory-bytes", str(KV_CACHE_BYTES)))
    for flag, value in added:
        if flag not in out:
            out += [flag, value]
            made.append(f"{flag}: added {value}")
    if not {"--enforce-eager", "--no-enforce-eager"} & set(out):
        out.append("--enforce-eager")
        made.append("--enforce-eager: added")
    env, env_made = _environment(container, folder)
    return Launch([str(setup.vllm), "serve", str(setup.model), *out], env, made + env_made)


def _capped_tokens(value: str, limit: int) -> str:
    """A --max-model-len value cut to `limit`, read as vLLM reads it (digits, or a k/K/m/M
    suffix); a value that is not a finite number is left for vLLM to refuse, as on a node."""
    text = value.strip()
    scale = {"k": 1000, "K": 1024, "m": 1_000_000, "M": 1024 * 1024}.get(text[-1:], 1)
    digits = text[:-1] if scale != 1 else text
    try:
        tokens = int(float(digits) * scale)
    except (ValueError, OverflowError):  # "lots", "1e999" (inf), "nan"
        return value
    return str(limit) if tokens > limit else value


def _inside(folder: Path, path: str) -> Path:
    """`path` (absolute, in the pod) as a path under `folder`; NotServable if it leaves it."""
    local = Path(os.path.normpath(folder / path.lstrip("/")))
    if local != folder and folder not in local.parents:
        raise NotServable(f"the path {path!r} leaves the engine's folder")
    return local


def _environment(container: dict[str, Any], folder: Path) -> tuple[dict[str, str], list[str]]:
    volumes = folder / "volumes"
    mounts = sorted(
        (m["mountPath"].rstrip("/") or "/" for m in container.get("volumeMounts") or []),
        key=len,
        reverse=True,
    )
    for mount in mounts:
        _inside(volumes, mount)
    env = {name: os.environ[name] for name in BASE_ENV if name in os.environ}
    made: list[str] = []
    for item in container.get("env") or []:
        name = str(item["name"])
        if name in LOADER_ENV:
            raise NotServable(
                f"env {name} would load code of the pod's choosing on this machine (the local "
                "fleet runs engines as processes of the host, not in containers)"
            )
        if "value" not in item:
            made.append(f"env {name}: dropped (valueFrom)")
            continue
        value = str(item["value"])
        mount = next((m for m in mounts if value == m or value.startswith(m + "/")), None)
        if mount is not None:
            local = _inside(volumes, value)
            made.append(f"env {name}: {value} -> {local}")
            value = str(local)
        env[name] = value
    if container.get("envFrom"):
        made.append("envFrom: dropped")
    for name, relative in ENGINE_ENV.items():
        env.setdefault(name, str(folder / relative))
    env.setdefault("TMPDIR", str(short_tmp(folder)))
    for name, value in FIXED_ENV.items():
        if name in env and env[name] != value:
            made.append(f"env {name}: {env[name]} -> {value}")
        env[name] = value
    return env, made


def short_tmp(folder: Path) -> Path:
    """A temporary folder for one engine whose path leaves room for vLLM's socket names."""
    return Path(tempfile.gettempdir()) / f"factory-vllm-{folder.name[:12]}"
