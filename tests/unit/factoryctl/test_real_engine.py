"""The real engine's command line (the operator's, with the listed substitutions only) and
its supervision: restart with back-off, the engine's own last words, the kubelet's drain.

The supervision tests run real processes (a small Python program standing in for `vllm`),
so that pid files, sessions and signals are the real ones; vLLM itself runs in
tests/e2e/test_real_engine.py and in the parser test (tests/integration/vllm).
"""

from __future__ import annotations

import itertools
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from factory_operator.api import FleetRegion, InferenceFactory
from factory_operator.plan import Observed, OperatorSettings, plan_factory
from factoryctl import procs
from factoryctl.agents.engines import READY_ANNOTATION, EnginesAgent
from factoryctl.agents.real_engine import RealEngines, last_lines, process_name
from factoryctl.agents.vllm_command import (
    KV_CACHE_BYTES,
    SUBSTITUTIONS,
    NotServable,
    RealEngineSetup,
    command_line,
)
from factoryctl.components.resources import REAL_ENGINE_SAMPLE
from factoryctl.home import FleetHome
from factoryctl.topology import ENGINE_LABEL, load_topology, node_manifests
from tests.support.waiting import wait_until
from tests.unit.factoryctl.test_engines_agent import FakeCore

NOW = "2026-12-03T00:00:00Z"


def sample_pod(uid: str = "u-1") -> dict[str, Any]:
    """A running pod of the Deployment the operator renders for the real-engine sample."""
    doc = yaml.safe_load(REAL_ENGINE_SAMPLE.read_text())
    doc["metadata"] |= {"uid": "f-1", "generation": 1}
    factory = InferenceFactory.model_validate(doc)
    region = FleetRegion.model_validate({
        "apiVersion": "inference.factory.dev/v1alpha1", "kind": "FleetRegion",
        "metadata": {"name": "eu-west-1"}, "spec": {"jurisdiction": "EU"},
    })  # fmt: skip
    plan = plan_factory(factory, {"eu-west-1": region}, Observed(now=NOW), OperatorSettings())
    deployment = next(c for c in plan.apply if c["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    return {
        "metadata": {**template["metadata"], "uid": uid, "name": f"tiny-{uid}",
                     "namespace": "inference", "annotations": {}},
        "spec": {**template["spec"], "nodeName": "eu-west-1-l4-vllm-0"},
        "status": {"phase": "Running"},
    }  # fmt: skip


def sample_container() -> dict[str, Any]:
    """The engine container the operator renders for the real-engine sample."""
    container: dict[str, Any] = sample_pod()["spec"]["containers"][0]
    return container


def setup(tmp_path: Path, vllm: Path | None = None) -> RealEngineSetup:
    return RealEngineSetup(
        vllm=vllm or Path("/opt/vllm/bin/vllm"),
        model=Path("/cache/tiny"),
        max_model_len=2048,
        work=tmp_path / "engines",
    )


def test_the_operators_command_line_runs_with_only_the_listed_substitutions(
    tmp_path: Path,
) -> None:
    container = sample_container()
    launch = command_line(container, setup(tmp_path), 18000, tmp_path / "e")
    pod_args = container["args"]
    assert launch.argv[:3] == ["/opt/vllm/bin/vllm", "serve", "/cache/tiny"]
    local = launch.argv[3:]
    # Every flag the operator wrote is there, in order, with its value, except the listed ones.
    substituted = {"--host", "--port", "--tensor-parallel-size", "--max-model-len"}
    for flag, value in itertools.pairwise(pod_args):
        if flag.startswith("--") and not value.startswith("--") and flag not in substituted:
            assert local[local.index(flag) + 1] == value, flag
    assert [a for a in pod_args[1:] if a.startswith("--")] == [
        a for a in local if a.startswith("--") and a not in {"--kv-cache-memory-bytes",
                                                             "--enforce-eager"}
    ]  # fmt: skip
    pairs = dict(itertools.pairwise(local))
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "18000"
    assert pairs["--tensor-parallel-size"] == "1"
    assert pairs["--max-model-len"] == "512"  # the sample's own, within the tiny model's
    assert pairs["--kv-cache-memory-bytes"] == str(KV_CACHE_BYTES) and "--enforce-eager" in local
    assert "--shutdown-timeout" in local and "--enable-prefix-caching" in local
    # Each substitution made is one of those listed (the one place that says what differs).
    for made in launch.substitutions:
        head = made.split(":", 1)[0].split(" ", 1)[0]
        assert head in SUBSTITUTIONS or made.startswith(("env ", "envFrom")), made
    # The sample's own `--revision`-free, Hub model: nothing of it is dropped but the fraction.
    assert [m for m in launch.substitutions if "dropped" in m] == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max-model-len", "8192"], ["--max-model-len", "2048"]),
        (["--max-model-len=8k"], ["--max-model-len", "2048"]),
        (["--max-model-len", "1024"], ["--max-model-len", "1024"]),
        # Not a number: vLLM refuses it, as it would on a GPU node.
        (["--max-model-len", "lots"], ["--max-model-len", "lots"]),
        (["--max-model-len=1e999"], ["--max-model-len", "1e999"]),  # inf: vLLM's to refuse
        (["-tp", "4"], ["--tensor-parallel-size", "1"]),
        (["--tensor-parallel", "4"], ["--tensor-parallel-size", "1"]),  # an abbreviation
        (["--load-format", "runai_streamer", "--revision", "main"], []),
        (["--kv-cache-memory-bytes", "1"], ["--kv-cache-memory-bytes", "1"]),  # the pod's
        (["--tensor-parallel-size", "8", "--gpu-memory-utilization", "0.9"],
         ["--tensor-parallel-size", "1"]),
        (["--misspelled-flag", "x"], ["--misspelled-flag", "x"]),
    ],
)  # fmt: skip
def test_substitutions_of_flags(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    container = {"command": ["vllm", "serve"], "args": ["org/model", *args]}
    launch = command_line(container, setup(tmp_path), 9, tmp_path)
    assert launch.argv[3 : 3 + len(expected)] == expected
    assert launch.argv.count("--kv-cache-memory-bytes") == 1


def test_the_pods_own_eager_choice_is_kept(tmp_path: Path) -> None:
    container = {"command": ["vllm", "serve"], "args": ["m", "--no-enforce-eager"]}
    argv = command_line(container, setup(tmp_path), 9, tmp_path).argv
    assert "--no-enforce-eager" in argv and "--enforce-eager" not in argv


@pytest.mark.parametrize(
    "container",
    [
        # Code of the pod's choosing on the host (the fleet runs engines as host processes).
        {"env": [{"name": "PYTHONPATH", "value": "/tmp/evil"}]},
        {"env": [{"name": "LD_PRELOAD", "value": "/tmp/evil.so"}]},
        # Paths out of the engine's folder, through a mount or a value under one.
        {"volumeMounts": [{"name": "x", "mountPath": "/a/../../../.."}]},
        {"volumeMounts": [{"name": "c", "mountPath": "/root/.cache"}],
         "env": [{"name": "HF_HOME", "value": "/root/.cache/../../../../../tmp/escaped"}]},
    ],
)  # fmt: skip
def test_a_pod_cannot_act_on_the_host(tmp_path: Path, container: dict[str, Any]) -> None:
    with pytest.raises(NotServable):
        command_line({"command": ["vllm", "serve"], "args": ["m"], **container},
                     setup(tmp_path), 9, tmp_path / "e")  # fmt: skip


def test_the_engine_starts_from_a_clean_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACTORY_HOME", "/somewhere")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "agent-secret")
    container = {"command": ["vllm", "serve"], "args": ["m"],
                 "env": [{"name": "HF_HUB_OFFLINE", "value": "0"}]}  # fmt: skip
    launch = command_line(container, setup(tmp_path), 9, tmp_path / "e")
    assert "FACTORY_HOME" not in launch.env and "AWS_SECRET_ACCESS_KEY" not in launch.env
    assert launch.env["HF_HUB_OFFLINE"] == "1"
    assert "env HF_HUB_OFFLINE: 0 -> 1" in launch.substitutions


def test_an_engines_last_words_leave_out_its_access_log(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    scrape = 'INFO:     127.0.0.1:1 - "GET /metrics HTTP/1.1" 200 OK\n'
    log.write_text("ValueError: bad\n" + scrape * 30)
    assert last_lines(log) == "ValueError: bad"


def test_environment_secrets_dropped_volumes_and_caches_local(tmp_path: Path) -> None:
    container = {
        "command": ["vllm", "serve"],
        "args": ["m"],
        "env": [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "NEURON_COMPILE_CACHE_URL", "value": "/var/cache/neuron/cc"},
            {"name": "PLAIN", "value": "kept"},
        ],
        "envFrom": [{"secretRef": {"name": "aws"}}],
        "volumeMounts": [{"name": "neuron", "mountPath": "/var/cache/neuron"}],
    }
    folder = tmp_path / "e"
    launch = command_line(container, setup(tmp_path), 9, folder)
    assert "HF_TOKEN" not in launch.env and launch.env["PLAIN"] == "kept"
    assert launch.env["NEURON_COMPILE_CACHE_URL"] == str(folder / "volumes/var/cache/neuron/cc")
    assert launch.env["HF_HOME"].startswith(str(folder)) and launch.env["HF_HUB_OFFLINE"] == "1"
    assert any(m.startswith("envFrom") for m in launch.substitutions)


@pytest.mark.parametrize(
    "container",
    [
        {"command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
         "args": ["--model", "m"]},
        {"command": ["vllm", "serve"], "args": ["--served-model-name", "x"]},
    ],
)  # fmt: skip
def test_only_vllm_serve_with_a_model_is_run(tmp_path: Path, container: dict[str, Any]) -> None:
    with pytest.raises(NotServable):
        command_line(container, setup(tmp_path), 9, tmp_path)


# A stand-in for `vllm`: prints its arguments, then either fails as vLLM's parser does,
# serves until signalled (ignoring SIGTERM when asked), or exits at once.
FAKE_VLLM = """\
import signal, sys, time
args = sys.argv[1:]
print("starting", " ".join(args), flush=True)
if "--bad-flag" in args:
    print("vllm serve: error: unrecognized arguments: --bad-flag", flush=True)
    sys.exit(2)
if "--spawn-child" in args:  # an engine process in the same session, as vLLM's EngineCore
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("child", child.pid, flush=True)
if "--ignore-term" in args:
    signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
else:
    signal.signal(signal.SIGTERM, lambda *_: (print("draining", flush=True), sys.exit(0)))
while True:
    time.sleep(0.05)
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fake_vllm(tmp_path: Path) -> Path:
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_VLLM)
    wrapper = tmp_path / "vllm"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {script} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _pod(uid: str, extra: list[str], grace: int = 30, prestop: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": f"pod-{uid}", "namespace": "inference",
                     "labels": {"app.kubernetes.io/managed-by": "inference-factory"},
                     "annotations": {}},
        "spec": {
            "nodeName": "eu-west-1-l4-vllm-0",
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "vllm", "command": ["vllm", "serve"], "args": ["m", *extra],
                "lifecycle": {"preStop": {"sleep": {"seconds": prestop}}},
            }],
        },
        "status": {"phase": "Running"},
    }  # fmt: skip


def test_an_engine_that_fails_is_reported_in_its_own_words_and_retried_with_backoff(
    tmp_path: Path,
) -> None:
    home = FleetHome(tmp_path / "home")
    clock = Clock()
    engines = RealEngines(home, setup(tmp_path, _fake_vllm(tmp_path)), clock=clock)
    pod = _pod("u1", ["--bad-flag"])
    first = engines.poll(pod)
    assert first.port is not None
    wait_until(lambda: procs.running_pid(home, process_name("u1")) is None, 20,
               what="the engine to exit")  # fmt: skip
    failed = engines.poll(pod)
    assert failed.exited_now is not None
    assert "unrecognized arguments: --bad-flag" in failed.exited_now
    # Back-off: not started again before it is due, then started (and failing again).
    assert engines.poll(pod) == failed.__class__(None, running=False)
    clock.now += 10.5
    assert engines.poll(pod).running or procs.recorded_argv(home, process_name("u1"))
    engines.stop_all()


def test_a_gone_pod_gets_its_prestop_then_sigterm_then_sigkill(tmp_path: Path) -> None:
    home = FleetHome(tmp_path / "home")
    clock = Clock()
    engines = RealEngines(home, setup(tmp_path, _fake_vllm(tmp_path)), clock=clock)
    pod = _pod("u2", ["--ignore-term"], grace=30, prestop=2)
    assert engines.poll(pod).running
    log = procs.log_path(home, process_name("u2"))
    wait_until(lambda: "starting" in log.read_text(), 20, what="the engine to start")
    assert engines.release("u2", pod) is False  # preStop sleep: nothing signalled yet
    assert "SIGTERM" not in log.read_text()
    clock.now += 2.5
    engines.release("u2", pod)
    wait_until(lambda: "SIGTERM ignored" in log.read_text(), 20, what="SIGTERM after preStop")
    clock.now += 30
    engines.release("u2", pod)  # the grace period is over: SIGKILL
    wait_until(lambda: engines.release("u2", pod), 20, what="the engine killed")
    assert procs.running_pid(home, process_name("u2")) is None


def test_a_restarted_agent_adopts_running_engines(tmp_path: Path) -> None:
    home = FleetHome(tmp_path / "home")
    # One wrapper for both agents: writing it again could truncate it under a shell that
    # has not read it yet (the first engine would then exit at once, saying nothing).
    vllm = _fake_vllm(tmp_path)
    first = RealEngines(home, setup(tmp_path, vllm))
    port = first.poll(_pod("u3", [])).port
    child = first.runs["u3"].process  # the first agent's child, reaped at the end
    assert child is not None
    again = RealEngines(home, setup(tmp_path, vllm))
    assert again.uids() == {"u3"} and again.poll(_pod("u3", [])).port == port
    again.stop_all()
    assert procs.running_pid(home, process_name("u3")) is None
    assert child.wait(10) is not None


def test_the_agent_puts_an_event_and_not_ready_on_a_pod_whose_engine_failed(
    tmp_path: Path,
) -> None:
    topology = load_topology()
    node = next(n for n in node_manifests(topology)
                if n["metadata"]["labels"].get(ENGINE_LABEL) == "vllm")  # fmt: skip
    pod = _pod("u4", ["--bad-flag"])
    pod["spec"]["nodeName"] = node["metadata"]["name"]
    core = FakeCore([node], [pod])
    home = FleetHome(tmp_path / "home")
    real = RealEngines(home, setup(tmp_path, _fake_vllm(tmp_path)))
    agent = EnginesAgent("", topology, {}, tmp_path / "targets.json", core=core, real=real)
    try:
        agent.converge()
        wait_until(lambda: (agent.converge(), core.events)[1], 20, interval=0.2,
                   what="the EngineFailed event")  # fmt: skip
        event = core.events[0]
        assert event["reason"] == "EngineFailed" and event["type"] == "Warning"
        assert "unrecognized arguments: --bad-flag" in event["message"]
        assert event["involvedObject"]["uid"] == "u4"
        assert pod["metadata"]["annotations"][READY_ANNOTATION] == "false"
    finally:
        agent.close()


def _child_pid(log: Path) -> int | None:
    for line in log.read_text().splitlines():
        if line.startswith("child "):
            return int(line.split()[1])
    return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_what_a_dead_engine_leaves_behind_is_ended(tmp_path: Path) -> None:
    """vLLM's engine and worker processes outlive `vllm serve` killed with SIGKILL."""
    home = FleetHome(tmp_path / "home")
    engines = RealEngines(home, setup(tmp_path, _fake_vllm(tmp_path)))
    pod = _pod("u5", ["--spawn-child"])
    assert engines.poll(pod).running
    log = procs.log_path(home, process_name("u5"))
    child = wait_until(lambda: _child_pid(log), 20, what="the engine's child process")
    procs.send_signal(home, process_name("u5"), signal.SIGKILL, group=False)  # the leader only
    wait_until(lambda: engines.poll(pod).exited_now, 20, what="the exit seen")
    wait_until(lambda: not _alive(child), 20, what="the orphaned child ended")
    engines.stop_all()


def test_the_pods_probes_ready_unready_and_restart(tmp_path: Path) -> None:
    """Readiness 5 s x 3, liveness 15 s x 4, as the operator writes them."""
    home = FleetHome(tmp_path / "home")
    clock = Clock()
    engines = RealEngines(home, setup(tmp_path, _fake_vllm(tmp_path)), clock=clock)
    pod = sample_pod("u6")
    pod["spec"]["containers"][0]["args"] = ["m"]
    assert engines.poll(pod).running
    assert not engines.probe(pod, answers=False).ready  # still loading: startup budget
    assert engines.probe(pod, answers=True).ready
    clock.now += 10
    assert engines.probe(pod, answers=False).ready  # one missed probe: still Ready
    clock.now += 6
    assert not engines.probe(pod, answers=False).ready  # past the readiness budget
    clock.now += 50
    verdict = engines.probe(pod, answers=False)  # past the liveness budget: killed
    assert verdict.restart is not None and verdict.restart.startswith("Liveness probe failed")
    wait_until(lambda: engines.poll(pod).exited_now, 20, what="the killed engine's exit")
    engines.stop_all()


def test_an_events_message_keeps_what_happened_and_the_last_words() -> None:
    from factoryctl.agents.engines import EVENT_MESSAGE_CHARS, _clip  # noqa: PLC0415

    message = _clip("vLLM exited; its last log lines:\n" + "x" * 5000 + "\nValueError: bad")
    assert message.startswith("vLLM exited; its last log lines:\n")
    assert message.endswith("ValueError: bad") and len(message) <= EVENT_MESSAGE_CHARS
