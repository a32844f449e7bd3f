"""A stream in progress finishes when its pod is deleted: the operator's `--shutdown-timeout`
on the real vLLM, through the engines agent's kubelet-style release (preStop sleep, then
SIGTERM to `vllm serve`, then SIGKILL at the end of the grace period).

One real engine runs the operator's command line for the local fleet's real-engine sample
(`deploy/local/tiny-llama.yaml`, with the agent's CPU substitutions), its `--max-model-len`
raised to the agent's cap so that a generation is long. It gets two full batches of long
streams (the sample's `--max-num-seqs`, twice); once the first batch is under way and vLLM's
own /metrics shows every stream in its engine (running or waiting), its pod is released
and the clock moved past the preStop sleep, so SIGTERM arrives while one batch runs and the
other waits in vLLM's queue. vLLM's log says how many requests it was draining (more than
none: SIGTERM came mid-generation), every stream ends with all its tokens, `finish_reason`
and `[DONE]`, and only then does vLLM exit, long before the grace period's SIGKILL.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from factoryctl import procs
from factoryctl.agents.real_engine import RealEngines, RealEngineSetup, process_name
from factoryctl.home import FleetHome
from factoryctl.vllm_env import VllmEnv, find_tiny_model
from tests.integration.vllm.conftest import ENGINE_START_SECONDS
from tests.support.waiting import wait_until
from tests.unit.factoryctl.test_real_engine import Clock, sample_pod

MAX_MODEL_LEN = 2048  # the agent's cap (RealEngineSetup.max_model_len)
MAX_TOKENS = 1900  # with the prompt, within MAX_MODEL_LEN
DRAINING = re.compile(r"\[shutdown\] EngineCore: draining in-flight requests count=(\d+)")


@dataclass
class Stream:
    """A streamed completion read on a thread: its chunks and how it ended."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    status: int | None = None
    done: bool = False

    def read(self, url: str, go: threading.Barrier) -> None:
        body = {"model": "tiny-llama", "prompt": "Once upon a time", "max_tokens": MAX_TOKENS,
                "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        try:
            with httpx.Client(timeout=300) as client:
                go.wait(60)  # every stream is sent at once
                with client.stream("POST", f"{url}/v1/completions", json=body) as reply:
                    self.status = reply.status_code
                    for line in reply.iter_lines():
                        if line.startswith("data: {"):
                            self.chunks.append(json.loads(line[len("data: ") :]))
                        elif line == "data: [DONE]":
                            self.done = True
        except httpx.HTTPError as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    @property
    def started(self) -> int:
        """Chunks with text so far (a busy engine may put several tokens in one)."""
        return sum(1 for c in self.chunks if c.get("choices") and c["choices"][0]["text"])

    @property
    def finish_reason(self) -> str | None:
        reasons = [c["choices"][0]["finish_reason"] for c in self.chunks if c.get("choices")]
        return next((r for r in reversed(reasons) if r), None)

    @property
    def completion_tokens(self) -> int | None:
        """What vLLM counted in the usage chunk at the end, if the stream got there."""
        usage = [c["usage"] for c in self.chunks if c.get("usage")]
        return int(usage[-1]["completion_tokens"]) if usage else None

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Chunks that are not completion chunks (vLLM's in-stream error objects)."""
        return [c for c in self.chunks if "choices" not in c]


def _long_generations(pod: dict[str, Any]) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    args = list(container["args"])
    args[args.index("--max-model-len") + 1] = str(MAX_MODEL_LEN)
    return {**pod, "spec": {**pod["spec"], "containers": [{**container, "args": args}]}}


def _admitted(url: str) -> int:
    """Requests vLLM's engine holds, running or waiting, by its own /metrics: the ones a
    SIGTERM now drains (a request still in the API server's hands when SIGTERM comes is
    refused, as it should be: its pod is going)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return int(sum(sample.value for family in text_string_to_metric_families(text)
                   if family.name in ("vllm:num_requests_running", "vllm:num_requests_waiting")
                   for sample in family.samples))  # fmt: skip


def _arg(pod: dict[str, Any], flag: str) -> str:
    args: list[str] = pod["spec"]["containers"][0]["args"]
    return args[args.index(flag) + 1]


@pytest.fixture
def engines(vllm_env: VllmEnv, tmp_path: Path) -> Any:
    model = find_tiny_model(vllm_env)
    assert model is not None, "the tiny model is missing: run `.venv/bin/factoryctl dev vllm`"
    home = FleetHome(tmp_path / "home")
    clock = Clock()
    setup = RealEngineSetup(vllm_env.vllm, model, MAX_MODEL_LEN, tmp_path / "engines")
    real = RealEngines(home, setup, clock=clock)
    try:
        yield real, clock, home
    finally:
        real.stop_all()


def test_streams_in_progress_finish_when_their_pod_is_deleted(
    engines: tuple[RealEngines, Clock, FleetHome],
) -> None:
    real, clock, home = engines
    pod = _long_generations(sample_pod("drained"))
    grace = float(pod["spec"]["terminationGracePeriodSeconds"])
    prestop = float(pod["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"])
    # The operator's flag: what is left of the grace period after the preStop sleep.
    assert 0 < float(_arg(pod, "--shutdown-timeout")) <= grace - prestop
    port = real.poll(pod).port
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, ENGINE_START_SECONDS, interval=1, what="the real engine to answer /health")
    # Twice the engine's batch: while the first batch generates, the second waits in vLLM's
    # queue, so SIGTERM surely lands with requests both running and waiting.
    batch = int(_arg(pod, "--max-num-seqs"))
    streams = [Stream() for _ in range(2 * batch)]
    go = threading.Barrier(len(streams))
    readers = [threading.Thread(target=s.read, args=(url, go)) for s in streams]
    for reader in readers:
        reader.start()
    wait_until(lambda: sum(s.started >= 3 for s in streams) >= batch, 120, interval=0.02,
               what="a batch of streams to be under way")  # fmt: skip
    wait_until(lambda: _admitted(url) == len(streams), 60, interval=0.02,
               what="vLLM's engine to hold every stream, running or waiting")  # fmt: skip
    # The pod is deleted: its preStop sleep first (nothing is signalled), then SIGTERM.
    assert real.release("drained", pod) is False
    clock.now += prestop
    assert real.release("drained", pod) is False
    ended_before_sigterm = [s.finish_reason for s in streams if s.finish_reason or s.done]
    for reader in readers:
        reader.join(timeout=240)
    assert not any(r.is_alive() for r in readers)

    log_text = procs.log_path(home, process_name("drained")).read_text(errors="replace")
    draining = [int(n) for n in DRAINING.findall(log_text)]
    assert not ended_before_sigterm, f"SIGTERM came after {len(ended_before_sigterm)} streams ended"
    assert draining and draining[0] > 0, "vLLM did not drain requests: SIGTERM came too late"
    for stream in streams:
        assert stream.status == 200 and stream.error is None, (stream.status, stream.error)
        assert stream.done and not stream.failures, stream.failures[:2]
        assert (stream.completion_tokens, stream.finish_reason) == (MAX_TOKENS, "length")
    # vLLM exits once its requests are done, long before the grace period's SIGKILL.
    wait_until(lambda: real.release("drained", pod), 60, interval=0.5,
               what="the drained engine to exit after its streams")  # fmt: skip
    assert procs.running_pid(home, process_name("drained")) is None
    print(f"\nvLLM drained {draining[0]} requests of {len(streams)} streams, "
          f"{MAX_TOKENS} tokens each")  # fmt: skip
