"""The two engines of the real-engine row, each started as its own process group.

``real_vllm`` starts the pinned vLLM CPU build on the project's tiny model with the flags of
the integration suite's ``real_engine`` fixture (tests/integration/vllm/conftest.py);
``simulated`` starts ``factory-sim serve`` with one engine on the ``cpu-tiny`` profile, served
under the same name and ``max_model_len``. Both are stopped by killing their process group
(vLLM's engine core and worker processes included): SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from factoryctl.vllm_env import find_tiny_model, find_vllm

SERVED_NAME = "tiny"
MAX_MODEL_LEN = 512
KV_CACHE_BYTES = 256 * 2**20  # the integration suite's figure; the default refuses to start
# About 80 s on 2 idle cores with --enforce-eager; several minutes when the machine is busy.
VLLM_START_SECONDS = 600
SIM_START_SECONDS = 60
STOP_GRACE_SECONDS = 30
POLL_SECONDS = 1.0


class EngineStartError(RuntimeError):
    """An engine exited or did not answer in time; the message carries its log's tail."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    # The leader may be gone while children of its group linger: one last SIGKILL.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_ready(proc: subprocess.Popen[bytes], ready: str, log: Path, seconds: float) -> float:
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineStartError(f"exited with {proc.returncode}:\n{_tail(log)}")
        if _answers(ready):
            return time.monotonic() - started
        time.sleep(POLL_SECONDS)
    raise EngineStartError(f"no answer from {ready} within {seconds:.0f} s:\n{_tail(log)}")


@contextlib.contextmanager
def real_vllm() -> Iterator[tuple[str, dict[str, object]]]:
    """`vllm serve` on the tiny model; yields its base URL and facts about the start."""
    env = find_vllm()
    model = find_tiny_model(env) if env is not None else None
    if env is None or model is None:
        raise EngineStartError(
            "the pinned vLLM or the tiny model is missing: run `.venv/bin/factoryctl dev vllm`"
        )
    # A short folder: vLLM's Unix sockets live under TMPDIR (107-byte path limit).
    with tempfile.TemporaryDirectory(prefix="sfr-", dir="/tmp") as tmp:
        work = Path(tmp)
        port = _free_port()
        args = [
            str(env.vllm), "serve", str(model),
            "--served-model-name", SERVED_NAME,
            "--max-model-len", str(MAX_MODEL_LEN),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--enforce-eager",
            "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
        ]  # fmt: skip
        child_env = {
            **os.environ,
            "VLLM_CACHE_ROOT": str(work / "vllm-cache"),
            "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor"),
            "TMPDIR": str(work),
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
        }
        log = work / "serve.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                args,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=work,
                env=child_env,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            took = _wait_ready(proc, f"{url}/v1/models", log, VLLM_START_SECONDS)
            facts: dict[str, object] = {
                "vllm_version": env.version,
                "model": model.name,
                "args": args[3:],
                "start_s": round(took, 1),
                "log_lines": [
                    line
                    for line in log.read_text(errors="replace").splitlines()
                    if "KV cache size" in line or "Maximum concurrency" in line
                ],
            }
            yield url, facts
        finally:
            stop_group(proc)


@contextlib.contextmanager
def simulated(profile: str) -> Iterator[tuple[str, dict[str, object]]]:
    """`factory-sim serve` with one engine on ``profile``; yields its base URL."""
    factory_sim = Path(sys.executable).parent / "factory-sim"
    with tempfile.TemporaryDirectory(prefix="sfs-", dir="/tmp") as tmp:
        work = Path(tmp)
        engine = {
            "name": SERVED_NAME,
            "model_name": SERVED_NAME,
            "profile": profile,
            "max_model_len": MAX_MODEL_LEN,
            "seed": 0,
        }
        config = work / "engines.json"  # JSON is YAML
        config.write_text(json.dumps({"engines": [engine]}))
        out = work / "stdout"
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                [str(factory_sim), "serve", "--config", str(config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + SIM_START_SECONDS
            while "\n" not in out.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise EngineStartError(f"factory-sim did not start:\n{_tail(out)}")
                time.sleep(0.2)
            ready = json.loads(out.read_text().splitlines()[0])
            yield str(ready["engines"][0]["url"]), {"engine": engine}
        finally:
            stop_group(proc)
