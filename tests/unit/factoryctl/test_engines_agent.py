"""The engines agent as a readiness probe: an engine for every running engine pod, and the
pod marked ready only once that engine answers; a pod's simulated behaviour."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest

from factory_sim.engine import EngineConfig
from factory_sim.server import ControlServer, SimHost
from factoryctl.agents.engines import (
    ADDRESS_ANNOTATION,
    BEHAVIOUR_ANNOTATION,
    BEHAVIOUR_ENV,
    READY_ANNOTATION,
    EnginesAgent,
    engine_config,
    parse_behaviour,
)
from factoryctl.components.stages import ENGINE_READY_ANNOTATION
from factoryctl.topology import Topology, load_topology, node_manifests
from tests.support.waiting import async_wait_until

REGION = "eu-west-1"


def _node(topology: Topology) -> dict[str, Any]:
    return next(
        n for n in node_manifests(topology)
        if n["metadata"]["labels"]["topology.kubernetes.io/region"] == REGION
        and "nvidia.com/gpu" in n["status"]["capacity"]
    )  # fmt: skip


def _pod(name: str, node: str, phase: str = "Running", **annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "inference",
            "uid": f"uid-{name}",
            "labels": {"app.kubernetes.io/managed-by": "inference-factory"},
            "annotations": dict(annotations),
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "vllm",
                    "command": ["python3"],
                    "args": ["--model", "/m", "--served-model-name", "llama"],
                }
            ],
        },
        "status": {"phase": phase},
    }


class _List:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items


class FakeCore:
    """The calls of CoreV1Api the agent makes, on plain dicts."""

    def __init__(self, nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        self.nodes, self.pods = nodes, pods
        self.api_client = self
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []

    def sanitize_for_serialization(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return copy.deepcopy(items)

    def list_node(self) -> _List:
        return _List(self.nodes)

    def list_pod_for_all_namespaces(self, label_selector: str) -> _List:
        assert label_selector == "app.kubernetes.io/managed-by=inference-factory"
        return _List(self.pods)

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.patches.append((name, body))
        pod = next(p for p in self.pods if p["metadata"]["name"] == name)
        pod["metadata"]["annotations"].update(body["metadata"]["annotations"])

    def create_namespaced_event(self, namespace: str, body: dict[str, Any]) -> None:
        assert body["involvedObject"]["namespace"] == namespace
        self.events.append(body)


@pytest.fixture
async def control() -> Any:
    async with SimHost() as host:
        server = ControlServer(host)
        await server.start()
        try:
            yield host, f"http://127.0.0.1:{server.port}"
        finally:
            await server.stop()


async def test_engine_pod_marked_ready_once_its_engine_answers(
    control: tuple[SimHost, str], tmp_path: Path
) -> None:
    host, url = control
    topology = load_topology()
    node = _node(topology)
    loading = _pod("slow-to-load", node["metadata"]["name"],
                   **{BEHAVIOUR_ANNOTATION: "load_s=1.5"})  # fmt: skip
    pending = _pod("pending", node["metadata"]["name"], phase="Pending")
    core = FakeCore([node], [loading, pending])
    agent = EnginesAgent("", topology, {REGION: url}, tmp_path / "targets.json", core=core)
    try:
        await _probe_and_drain(agent, host, core, loading, tmp_path)
    finally:
        agent.close()


async def _probe_and_drain(agent: EnginesAgent, host: SimHost, core: FakeCore,
                           loading: dict[str, Any], tmp_path: Path) -> None:  # fmt: skip
    await asyncio.to_thread(agent.converge)
    # The engine runs at once (scraped, reachable), but the pod is not ready before it loads.
    assert set(host.engines) == {"uid-slow-to-load"}
    assert core.patches == []
    assert "127.0.0.1:" in (tmp_path / "targets.json").read_text()

    async def announced() -> bool:
        await asyncio.to_thread(agent.converge)
        return bool(core.patches)

    await async_wait_until(announced, timeout=10, interval=0.2, what="the pod marked ready")
    port = host.engines["uid-slow-to-load"].port
    assert core.patches == [("slow-to-load", {"metadata": {"annotations": {
        ADDRESS_ANNOTATION: f"127.0.0.1:{port}", READY_ANNOTATION: "true"}}})]  # fmt: skip
    await asyncio.to_thread(agent.converge)
    assert len(core.patches) == 1  # nothing more to say
    # A pending pod gets no engine; a deleted one has its engine drained.
    loading["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    await asyncio.to_thread(agent.converge)
    assert agent.draining.keys() == {"uid-slow-to-load"}


async def test_behaviour_from_annotation_or_environment_reaches_the_engine(
    control: tuple[SimHost, str], tmp_path: Path
) -> None:
    host, url = control
    topology = load_topology()
    node = _node(topology)["metadata"]["name"]
    by_env = _pod("by-env", node)
    by_env["spec"]["containers"][0]["env"] = [{"name": BEHAVIOUR_ENV, "value": "error_rate=0.05"}]
    core = FakeCore([_node(topology)], [
        _pod("by-annotation", node, **{BEHAVIOUR_ANNOTATION: "slow=3, answer_seed=b"}), by_env,
        _pod("typo", node, **{BEHAVIOUR_ANNOTATION: "slowness=3"}),
    ])  # fmt: skip
    agent = EnginesAgent("", topology, {REGION: url}, tmp_path / "t.json", core=core)
    try:
        await asyncio.to_thread(agent.converge)
    finally:
        agent.close()
    behaviour = {k: h.config.behaviour for k, h in host.engines.items()}
    assert behaviour.keys() == {"uid-by-annotation", "uid-by-env"}  # a typo starts nothing
    assert (behaviour["uid-by-annotation"].slow, behaviour["uid-by-annotation"].answer_seed) == (
        3.0, "b")  # fmt: skip
    assert behaviour["uid-by-env"].error_rate == 0.05


async def test_behaviour_is_read_once_when_the_engine_starts(
    control: tuple[SimHost, str], tmp_path: Path
) -> None:
    """The annotation wins over the environment; a running pod annotated later keeps its
    engine as it was (a bad revision is a new pod; sim/README.md)."""
    host, url = control
    topology = load_topology()
    node = _node(topology)["metadata"]["name"]
    pod = _pod("both", node, **{BEHAVIOUR_ANNOTATION: "answer_seed=by-annotation"})
    pod["spec"]["containers"][0]["env"] = [{"name": BEHAVIOUR_ENV, "value": "answer_seed=env"}]
    core = FakeCore([_node(topology)], [pod])
    agent = EnginesAgent("", topology, {REGION: url}, tmp_path / "t.json", core=core)
    try:
        await asyncio.to_thread(agent.converge)
        started = host.engines["uid-both"]
        assert started.config.behaviour.answer_seed == "by-annotation"
        pod["metadata"]["annotations"][BEHAVIOUR_ANNOTATION] = "error_rate=1"
        await asyncio.to_thread(agent.converge)
    finally:
        agent.close()
    assert host.engines["uid-both"] is started
    assert started.config.behaviour.error_rate == 0.0


def test_parse_behaviour() -> None:
    assert parse_behaviour("") == {}
    parsed = parse_behaviour("slow=3,error_rate=0.05,error_status=503,answer_seed=v2,load_s=5")
    assert parsed == {"slow": 3.0, "error_rate": 0.05, "error_status": 503,
                      "answer_seed": "v2", "load_s": 5.0}  # fmt: skip
    EngineConfig.model_validate({"model_name": "m", "behaviour": parsed})  # the sim accepts it
    for wrong, message in (("slow", "key=value"), ("fast=2", "fast"), ("slow=x", "float")):
        with pytest.raises(ValueError, match=message):
            parse_behaviour(wrong)


def test_engine_config_carries_the_behaviour() -> None:
    topology = load_topology()
    node = _node(topology)
    pod = _pod("p", node["metadata"]["name"], **{BEHAVIOUR_ANNOTATION: "answer_seed=x"})
    cfg = engine_config(pod, node["metadata"]["labels"], topology)
    assert cfg is not None and cfg["behaviour"] == {"answer_seed": "x"}
    assert "behaviour" not in (engine_config(_pod("q", "n"), node["metadata"]["labels"],
                                             topology) or {})  # fmt: skip


def test_the_agent_sets_the_annotation_the_stages_wait_for() -> None:
    assert READY_ANNOTATION == ENGINE_READY_ANNOTATION
