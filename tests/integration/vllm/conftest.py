"""Fixtures for tests against the real, pinned vLLM (CPU build) and the tiny model.

The suite's set-up (`scripts/test.sh`, phase `vllm`) installs the environment and makes the
model with `factoryctl dev vllm`; a test that finds either missing fails (never skips), saying
how to make it. One real engine serves the whole session (it takes about 80 s to start and
about 3.3 GiB), and only one: the machine has 2 cores shared with other work.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from factoryctl.vllm_env import VllmEnv, find_tiny_model, find_vllm
from tests.support.waiting import wait_until

SERVED_NAME = "tiny"
MAX_MODEL_LEN = 512
# About 80 s on 2 idle cores with --enforce-eager (imports in three processes); more when
# the machine is busy with other tests.
ENGINE_START_SECONDS = 420
ENGINE_STOP_SECONDS = 30
SIM_START_SECONDS = 60


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vllm: needs the pinned real vLLM environment")


@pytest.fixture(scope="session")
def vllm_env() -> VllmEnv:
    """The installed vLLM environment; fails the test when it is missing."""
    env = find_vllm()
    if env is None:
        pytest.fail("the pinned vLLM environment is missing: run `.venv/bin/factoryctl dev vllm`")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (vLLM's engine and worker processes too), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, ENGINE_STOP_SECONDS), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def real_engine(vllm_env: VllmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vllm serve` on the tiny model, on 127.0.0.1; yields its base URL."""
    model = find_tiny_model(vllm_env)
    if model is None:
        pytest.fail("the tiny model is missing: run `.venv/bin/factoryctl dev vllm`")
    work = tmp_path_factory.mktemp("vllm-serve")
    port = _free_port()
    env = {
        **os.environ,
        # Its caches and temporary files stay in the test's folder.
        "VLLM_CACHE_ROOT": str(work / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor"),
        "TMPDIR": str(work),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    args = [
        str(vllm_env.vllm),
        "serve",
        str(model),
        "--served-model-name",
        SERVED_NAME,
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",  # no torch.compile: starts about 60 s sooner
        "--kv-cache-memory-bytes",
        str(256 * 2**20),  # the default (92% of memory) refuses to start on a shared machine
    ]
    log_path = work / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=work,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: proc.poll() is not None or _answers(f"{url}/v1/models"),
            timeout=ENGINE_START_SECONDS,
            interval=1,
            what="vllm serve to answer /v1/models",
        )
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{_tail(log_path)}")
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def sim_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`factory-sim serve` with one engine configured as the real one; yields its base URL."""
    work = tmp_path_factory.mktemp("factory-sim")
    config = work / "engines.json"  # JSON is YAML
    engine = {
        "name": SERVED_NAME,
        "model_name": SERVED_NAME,
        "profile": "l4",
        "max_model_len": MAX_MODEL_LEN,
        "time_scale": 0.1,
    }
    config.write_text(json.dumps({"engines": [engine]}))
    out = work / "stdout"
    factory_sim = Path(sys.executable).parent / "factory-sim"  # the project's venv
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [str(factory_sim), "serve", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: proc.poll() is not None or "\n" in out.read_text(),
            timeout=SIM_START_SECONDS,
            what="factory-sim to print its ready line",
        )
        if proc.poll() is not None:
            pytest.fail(f"factory-sim exited with {proc.returncode}:\n{_tail(out)}")
        ready = json.loads(out.read_text().splitlines()[0])
        yield str(ready["engines"][0]["url"])
    finally:
        _stop(proc)
