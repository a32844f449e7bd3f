"""A stream in progress finishes when its pod is deleted: the operator's `--shutdown-timeout`
on the real vLLM, through the engines agent's kubelet-style release (preStop sleep, then
SIGTERM, then SIGKILL at the end of the grace period).

Two real engines run the operator's command line for the local fleet's real-engine sample
(`deploy/local/tiny-llama.yaml`, with the agent's CPU substitutions): one as generated, one
with `--shutdown-timeout 0` (vLLM's default, what the operator generated before). Each gets a
long stream; its pod is released and the clock moved past the preStop sleep, so SIGTERM
arrives while the stream runs. With the operator's flag the stream ends with all its tokens
and `finish_reason`, and only then does vLLM exit; with 0 it is cut.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from factoryctl import procs
from factoryctl.agents.real_engine import RealEngines, RealEngineSetup, process_name
from factoryctl.home import FleetHome
from factoryctl.vllm_env import VllmEnv, find_tiny_model
from tests.integration.vllm.conftest import ENGINE_START_SECONDS
from tests.support.waiting import wait_until
from tests.unit.factoryctl.test_real_engine import Clock, sample_pod

MAX_TOKENS = 400  # within the sample's --max-model-len 512, a few seconds on the tiny model


@dataclass
class Stream:
    """A streamed completion read on a thread: its chunks and how it ended."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    done: bool = False

    def read(self, url: str) -> None:
        body = {"model": "tiny-llama", "prompt": "Once upon a time", "max_tokens": MAX_TOKENS,
                "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        try:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as reply:
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


def _without_drain(pod: dict[str, Any]) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    args = list(container["args"])
    args[args.index("--shutdown-timeout") + 1] = "0"
    return {**pod, "spec": {**pod["spec"], "containers": [{**container, "args": args}]}}


@pytest.fixture
def engines(vllm_env: VllmEnv, tmp_path: Path) -> Any:
    model = find_tiny_model(vllm_env)
    assert model is not None, "the tiny model is missing: run `.venv/bin/factoryctl dev vllm`"
    home = FleetHome(tmp_path / "home")
    clock = Clock()
    setup = RealEngineSetup(vllm_env.vllm, model, 2048, tmp_path / "engines")
    real = RealEngines(home, setup, clock=clock)
    try:
        yield real, clock, home
    finally:
        real.stop_all()


def test_a_stream_finishes_when_its_pod_is_deleted_and_is_cut_without_the_flag(
    engines: tuple[RealEngines, Clock, FleetHome],
) -> None:
    real, clock, home = engines
    drained, cut = sample_pod("drained"), _without_drain(sample_pod("cut"))
    assert "--shutdown-timeout" in drained["spec"]["containers"][0]["args"]
    ports = {}
    for pod in (drained, cut):  # both load at once: about 80-130 s on 2 cores
        ports[pod["metadata"]["uid"]] = real.poll(pod).port

    def answers(port: int | None) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(lambda: all(answers(p) for p in ports.values()), ENGINE_START_SECONDS,
               interval=1, what="both real engines to answer /health")  # fmt: skip
    streams = {uid: Stream() for uid in ports}
    readers = [
        threading.Thread(target=streams[uid].read, args=(f"http://127.0.0.1:{port}",))
        for uid, port in ports.items()
    ]
    for reader in readers:
        reader.start()
    wait_until(lambda: all(s.started >= 3 for s in streams.values()), 60, interval=0.05,
               what="both streams to be under way")  # fmt: skip
    # The pods are deleted: preStop sleep first (nothing happens), then SIGTERM.
    for pod in (drained, cut):
        assert real.release(pod["metadata"]["uid"], pod) is False
    clock.now += float(drained["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"])
    for pod in (drained, cut):
        real.release(pod["metadata"]["uid"], pod)
    # SIGTERM has gone out; neither stream had ended.
    unfinished = {uid: s.finish_reason is None and not s.done for uid, s in streams.items()}
    for reader in readers:
        reader.join(timeout=120)
    assert not any(r.is_alive() for r in readers)

    assert unfinished == {"drained": True, "cut": True}, "SIGTERM came after a stream ended"
    kept = streams["drained"]
    assert kept.error is None and kept.done and not kept.failures, (kept.error, kept.failures)
    assert kept.completion_tokens == MAX_TOKENS and kept.finish_reason == "length"
    # vLLM exits once its requests are done, long before the grace period's SIGKILL.
    wait_until(lambda: real.release("drained", drained), 60, interval=0.5,
               what="the drained engine to exit after its stream")  # fmt: skip
    assert procs.running_pid(home, process_name("drained")) is None

    lost = streams["cut"]
    assert lost.finish_reason != "length" and (lost.completion_tokens or 0) < MAX_TOKENS, (
        lost.finish_reason, lost.completion_tokens, lost.error, lost.failures)  # fmt: skip
