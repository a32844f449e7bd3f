"""Real vLLM engines behind the engine pods of the local fleet's real-engine nodes.

A node pool marked `engine: vllm` in the topology (label and NoSchedule taint
`inference.factory.dev/local-engine=vllm`) is served by the pinned real vLLM (CPU build) and
the tiny model that `factoryctl dev vllm` makes, not by the simulator. The engines agent
starts, for each running pod on such a node, **the command line the operator generated for the
pod**, read from its spec, with only what a CPU machine forces changed. Every change is in
`SUBSTITUTIONS` below and nowhere else, and `command_line` reports each one it made, so an
invalid flag or value the operator writes fails here as it would on a GPU node:

In short: the executable and the model are the pinned environment's and the tiny model; the
engine listens on 127.0.0.1 and a free port; tensor parallelism is 1; the GPU memory fraction
gives way to a KV cache sized in bytes; `--max-model-len` is cut to the tiny model's context;
`--enforce-eager` is added; Secrets are not there; the pod's volumes and caches are folders of
the engine. The table of the README's "A real engine" section is the same list.

Each engine is a process of the fleet (`factoryctl.procs`: its own session, a pid file, its
log in `<home>/logs/vllm-<pod uid>.log`), so a restarted agent adopts what runs and
`factoryctl dev down` stops what is left. An engine that exits is started again after a
back-off that doubles up to five minutes, as the kubelet's CrashLoopBackOff does; its last
log lines go to the agent's log and into an Event on the pod. A pod that is gone gets what the
kubelet would give it: its preStop sleep, then SIGTERM to `vllm serve` alone, as the container
runtime signals PID 1 (vLLM finishes in-flight requests within `--shutdown-timeout`), then
SIGKILL to all of it at the end of its termination grace period.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from factoryctl import procs
from factoryctl.home import FleetHome, free_port

log = logging.getLogger("factoryctl.engines.vllm")

PROCESS_PREFIX = "vllm-"
KV_CACHE_BYTES = 256 * 2**20
# vLLM's CPU backend has one device per NUMA node; this kind of machine has one.
CPU_TENSOR_PARALLEL = 1
BACKOFF_FIRST_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0
ERROR_LINES = 12

# Every substitution, and why: the one place that says what differs from the pod's spec.
SUBSTITUTIONS: dict[str, str] = {
    "executable": "the image's `vllm` is the pinned CPU environment's: no image runs here",
    "model": "no weights can be downloaded here; the tiny model stands in for the pod's model",
    "--host": "servers started on this machine listen on 127.0.0.1 only",
    "--port": "every engine shares this machine's network; a free port instead",
    "--tensor-parallel-size": "vLLM's CPU backend runs one device per NUMA node; here, one",
    "--gpu-memory-utilization": "a GPU memory fraction; on CPU the KV cache is sized in bytes",
    "--max-model-len": "the tiny model's context is 2048 tokens; larger values are cut to it",
    "--kv-cache-memory-bytes": "added: vLLM's CPU default (92% of memory) refuses to start on a "
    "shared machine",
    "--enforce-eager": "added: no torch.compile, about 60 s less to start on 2 cores",
    "env valueFrom / envFrom": "Secrets and ConfigMaps do not exist on this machine",
    "env under a volume mount": "the pod's volumes are folders of the engine here",
    "ENGINE_ENV": "vLLM's and Hugging Face's caches and temporary files stay in the engine's "
    "folder; nothing is fetched from the Hub",
}
DROPPED_FLAGS = {"--gpu-memory-utilization": 1}  # flag -> how many values follow it
# The environment every real engine gets, paths relative to its folder. (TMPDIR is not
# there: vLLM binds its processes' ZeroMQ sockets in it, and a Unix socket path has at most
# 107 bytes, so it is a short folder of the system's temporary directory: `short_tmp`.)
ENGINE_ENV = {
    "HF_HOME": "hf",
    "VLLM_CACHE_ROOT": "vllm-cache",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
}
FIXED_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1"}


class NotServable(ValueError):
    """The pod's container is not something the real engine can run (not `vllm serve`)."""


@dataclass(frozen=True)
class RealEngineSetup:
    """What the real engines run with: the pinned vLLM and the tiny model."""

    vllm: Path
    model: Path
    max_model_len: int
    work: Path  # one folder per engine below it


@dataclass(frozen=True)
class Launch:
    """A command line to run, and the substitutions made to the pod's."""

    argv: list[str]
    env: dict[str, str]
    substitutions: list[str]


def _split_equals(args: list[str]) -> list[str]:
    out: list[str] = []
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            out += arg.split("=", 1)
        else:
            out.append(arg)
    return out


def command_line(
    container: dict[str, Any], setup: RealEngineSetup, port: int, folder: Path
) -> Launch:
    """The real engine's command line and environment for one pod's engine container.

    Raises NotServable when the container does not run `vllm serve <model>`."""
    command = list(container.get("command") or [])
    args = _split_equals(list(container.get("args") or []))
    if command != ["vllm", "serve"]:
        raise NotServable(f"the engine container runs {command!r}, not ['vllm', 'serve']")
    if not args or args[0].startswith("-"):
        raise NotServable("`vllm serve` is given no model (its first argument)")
    made = [f"executable: vllm -> {setup.vllm}", f"model: {args[0]} -> {setup.model}"]
    rest = args[1:]
    out: list[str] = []
    index = 0
    replaced: dict[str, Callable[[str], str]] = {
        "--host": lambda _v: "127.0.0.1",
        "--port": lambda _v: str(port),
        "--tensor-parallel-size": lambda _v: str(CPU_TENSOR_PARALLEL),
        "--max-model-len": lambda v: _capped_tokens(v, setup.max_model_len),
    }
    while index < len(rest):
        arg = rest[index]
        if arg in DROPPED_FLAGS:
            values = rest[index + 1 : index + 1 + DROPPED_FLAGS[arg]]
            made.append(f"{arg} {' '.join(values)}: dropped")
            index += 1 + DROPPED_FLAGS[arg]
            continue
        if arg in replaced and index + 1 < len(rest):
            was, now = rest[index + 1], replaced[arg](rest[index + 1])
            if now != was:
                made.append(f"{arg}: {was} -> {now}")
            out += [arg, now]
            index += 2
            continue
        out.append(arg)
        index += 1
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag not in out:
            out += [flag, value]
            made.append(f"{flag}: added {value}")
    out += ["--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--enforce-eager"]
    made += [f"--kv-cache-memory-bytes: added {KV_CACHE_BYTES}", "--enforce-eager: added"]
    env, env_made = _environment(container, folder)
    return Launch([str(setup.vllm), "serve", str(setup.model), *out], env, made + env_made)


def _capped_tokens(value: str, limit: int) -> str:
    """A --max-model-len value cut to `limit`, read as vLLM reads it (digits, or a k/K/m/M
    suffix); a value that is not a number is left for vLLM to refuse, as on a GPU node."""
    text = value.strip()
    scale = {"k": 1000, "K": 1024, "m": 1_000_000, "M": 1024 * 1024}.get(text[-1:], 1)
    digits = text[:-1] if scale != 1 else text
    try:
        tokens = int(float(digits) * scale)
    except ValueError:
        return value
    return str(limit) if tokens > limit else value


def _environment(container: dict[str, Any], folder: Path) -> tuple[dict[str, str], list[str]]:
    mounts = sorted(
        (m["mountPath"].rstrip("/") for m in container.get("volumeMounts") or []),
        key=len,
        reverse=True,
    )
    env: dict[str, str] = {}
    made: list[str] = []
    for item in container.get("env") or []:
        name = item["name"]
        if "value" not in item:
            made.append(f"env {name}: dropped (valueFrom)")
            continue
        value = str(item["value"])
        mount = next((m for m in mounts if value == m or value.startswith(m + "/")), None)
        if mount is not None:
            local = folder / "volumes" / mount.lstrip("/") / value[len(mount) :].lstrip("/")
            made.append(f"env {name}: {value} -> {local}")
            value = str(local)
        env[name] = value
    if container.get("envFrom"):
        made.append("envFrom: dropped")
    for name, relative in ENGINE_ENV.items():
        env.setdefault(name, str(folder / relative))
    env.setdefault("TMPDIR", str(short_tmp(folder)))
    env |= FIXED_ENV
    return env, made


def short_tmp(folder: Path) -> Path:
    """A temporary folder for one engine whose path leaves room for vLLM's socket names."""
    return Path(tempfile.gettempdir()) / f"factory-vllm-{folder.name[:12]}"


def process_name(uid: str) -> str:
    return f"{PROCESS_PREFIX}{uid}"


def _port_of(argv: list[str]) -> int | None:
    for flag, value in pairwise(argv):
        if flag == "--port" and value.isdigit():
            return int(value)
    return None


def last_lines(path: Path, count: int = ERROR_LINES) -> str:
    """The end of an engine's log: where vLLM writes why it stopped."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(line for line in lines[-count:] if line.strip())


@dataclass
class EngineRun:
    """One pod's real engine, as the agent sees it."""

    uid: str
    port: int | None = None
    started: float | None = None
    failures: int = 0
    retry_at: float = 0.0
    error: str | None = None  # why the last run ended, the engine's own words
    # Set once the pod is gone: when SIGTERM is due, and when SIGKILL is.
    term_at: float | None = None
    kill_at: float | None = None
    substitutions: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None  # None for one a previous agent started


@dataclass(frozen=True)
class Poll:
    """What one pass found for a pod's engine."""

    port: int | None  # where it listens (or will), None while backing off
    running: bool
    exited_now: str | None = None  # set once, on the pass that saw it exit: why


class RealEngines:
    """Starts, watches and drains the real engines, one per pod uid."""

    def __init__(
        self,
        home: FleetHome,
        setup: RealEngineSetup,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.home = home
        self.setup = setup
        self.clock = clock
        self.runs: dict[str, EngineRun] = {}
        for name in procs.names(home):  # adopt what a previous agent started
            if name.startswith(PROCESS_PREFIX):
                uid = name.removeprefix(PROCESS_PREFIX)
                argv = procs.recorded_argv(home, name) or []
                self.runs[uid] = EngineRun(uid, port=_port_of(argv), started=clock())

    def poll(self, pod: dict[str, Any]) -> Poll:
        """Start the pod's engine if it should run and does not; say how it is."""
        uid = pod["metadata"]["uid"]
        run = self.runs.setdefault(uid, EngineRun(uid))
        name = process_name(uid)
        code = run.process.poll() if run.process is not None else None
        if code is None and procs.running_pid(self.home, name) is not None:
            return Poll(run.port, running=True)
        exited = None
        if run.started is not None:  # it ran and is gone: the engine's own words say why
            exited = last_lines(procs.log_path(self.home, name))
            if code is not None:
                exited += f"\n(exit code {code})"
            procs.forget(self.home, name)
            run.process = None
            run.started = None
            run.error = exited
            run.failures += 1
            delay = min(BACKOFF_FIRST_SECONDS * 2 ** (run.failures - 1), BACKOFF_MAX_SECONDS)
            run.retry_at = self.clock() + delay
            log.warning(
                "real engine of pod %s/%s exited; starting it again in %.0fs. Its last words:\n%s",
                pod["metadata"]["namespace"], pod["metadata"]["name"], delay, exited,
            )  # fmt: skip
            return Poll(None, running=False, exited_now=exited)
        if self.clock() < run.retry_at:
            return Poll(None, running=False)
        self._start(pod, run)
        return Poll(run.port, running=run.started is not None)

    def _start(self, pod: dict[str, Any], run: EngineRun) -> None:
        folder = self.setup.work / run.uid
        port = free_port()
        launch = command_line(pod["spec"]["containers"][0], self.setup, port, folder)
        for relative in ENGINE_ENV.values():
            (folder / relative).mkdir(parents=True, exist_ok=True)
        short_tmp(folder).mkdir(parents=True, exist_ok=True)
        run.process = procs.spawn(
            self.home, process_name(run.uid), launch.argv, env=launch.env, cwd=folder
        )
        run.port, run.started, run.substitutions = port, self.clock(), launch.substitutions
        log.info(
            "real engine of pod %s/%s on port %d: %s\n  substitutions: %s",
            pod["metadata"]["namespace"], pod["metadata"]["name"], port,
            " ".join(launch.argv), "; ".join(launch.substitutions),
        )  # fmt: skip

    def release(self, uid: str, pod: dict[str, Any] | None = None) -> bool:
        """The pod is gone (or no longer wants its engine): drain and stop it as the kubelet
        would. Returns True once nothing of it is left."""
        run = self.runs.get(uid)
        name = process_name(uid)
        if run is not None and run.process is not None:
            run.process.poll()  # reap it if it has exited
        if run is None or procs.running_pid(self.home, name) is None:
            procs.forget(self.home, name)
            self.runs.pop(uid, None)
            self._clean(uid)
            return True
        now = self.clock()
        if run.term_at is None:
            prestop, grace = _termination(pod)
            run.term_at, run.kill_at = now + prestop, now + grace
        if run.kill_at is not None and now >= run.kill_at:
            procs.send_signal(self.home, name, signal.SIGKILL, group=True)
        elif now >= run.term_at:
            # To `vllm serve` alone, as the runtime signals a container's PID 1: the API
            # server then drains and stops its engine processes itself (a SIGTERM to the whole
            # group kills the engine core under the streams it is finishing).
            procs.send_signal(self.home, name, signal.SIGTERM, group=False)
        return False

    def uids(self) -> set[str]:
        return set(self.runs)

    def stop_all(self) -> None:
        for uid, run in list(self.runs.items()):
            procs.stop(self.home, process_name(uid), grace=30)
            if run.process is not None:
                run.process.wait(5)
            self.runs.pop(uid, None)
            self._clean(uid)

    def _clean(self, uid: str) -> None:
        """The pod is gone: so are its engine's folders (as its emptyDir volumes)."""
        folder = self.setup.work / uid
        shutil.rmtree(short_tmp(folder), ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


# When the agent first sees a pod gone it no longer has its spec: the operator's defaults.
DEFAULT_PRESTOP_SECONDS = 5
DEFAULT_GRACE_SECONDS = 60


def _termination(pod: dict[str, Any] | None) -> tuple[float, float]:
    """(preStop sleep, termination grace period) of a pod, as the kubelet applies them."""
    if pod is None:
        return DEFAULT_PRESTOP_SECONDS, DEFAULT_GRACE_SECONDS
    spec = pod["spec"]
    grace = float(spec.get("terminationGracePeriodSeconds", 30))
    container = spec["containers"][0]
    sleep = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
    return min(float(sleep.get("seconds", 0)), grace), grace


def stop_all_recorded(home: FleetHome) -> int:
    """Stop every real engine of a home (for `dev down`, with or without an agent)."""
    stopped = 0
    for name in procs.names(home):
        if name.startswith(PROCESS_PREFIX) and procs.stop(home, name, grace=30):
            stopped += 1
    return stopped
