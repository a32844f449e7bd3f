"""A real vLLM engine in the local fleet, through the router, as a client sees it.

The default topology has one real-engine node pool (eu-west-1 `l4-vllm`, `engine: vllm`) and
`dev up` applies `deploy/local/tiny-llama.yaml`, whose only pool runs there: the engines agent
starts real `vllm serve` (CPU build, the tiny model) with the command line the operator
generated for the pod. Proof that a request reached it is the engine's own counter
(`vllm:request_success_total` on its /metrics), not the router's headers.

The last two tests add a simulated pool of the same model in the same jurisdiction (so there
is somewhere to fail over to), kill the real engine mid-run, then roll out a command line that
vLLM refuses; the fixture restores the factory and waits for the real engine again.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from factoryctl.agents.real_engine import process_name
from factoryctl.home import FleetHome
from factoryctl.procs import running_pid
from tests.e2e.conftest import Fleet
from tests.support.waiting import wait_until

MODEL = "tiny-llama"
NAMESPACE = "inference"
REAL_POOL = "l4-vllm"
SIM_POOL = "l4-sim"
# The router names a pool by its Service, <factory>-<pool> (x-factory-pool, explain).
REAL_BACKEND = f"{MODEL}-{REAL_POOL}"
SIM_BACKEND = f"{MODEL}-{SIM_POOL}"
MESSAGES: list[Any] = [{"role": "user", "content": "Hello from the real engine test."}]
# vLLM loads in 80-130 s on 2 idle cores; the suite keeps them busy.
ENGINE_START_SECONDS = 600


def _client(fleet: Fleet, tenant: str = "eu-only") -> openai.OpenAI:
    key = fleet.env["tenants"][tenant]["api_key"]
    return openai.OpenAI(base_url=f"{fleet.env['router_url']}/v1", api_key=key, max_retries=0,
                         timeout=60)  # fmt: skip


def _pods(fleet: Fleet, pool: str) -> list[dict[str, Any]]:
    out = fleet.cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json", "-l",
                                f"inference.factory.dev/factory={MODEL},"
                                f"inference.factory.dev/pool={pool}")  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _ready_pod(fleet: Fleet, pool: str, timeout: float) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        pods = [p for p in _pods(fleet, pool) if _ready(p)]
        return pods[0] if pods else None

    return wait_until(found, timeout, interval=1, what=f"a Ready pod of {MODEL}/{pool}")


def _engine_url(pod: dict[str, Any]) -> str:
    return f"http://{pod['metadata']['annotations']['inference.factory.dev/address']}"


def _served(url: str) -> float:
    """The real engine's own count of finished requests."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "vllm:request_success"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


@pytest.fixture(scope="module")
def real_pod(fleet: Fleet) -> dict[str, Any]:
    """The real engine's pod, Ready (`dev up` waited for it already)."""
    state = json.loads((fleet.home / "state.json").read_text())
    assert (state.get("real_engine") or {}).get("on"), state.get("real_engine")
    return _ready_pod(fleet, REAL_POOL, ENGINE_START_SECONDS)


def test_openai_client_reaches_the_real_engine_through_the_router(
    fleet: Fleet, real_pod: dict[str, Any]
) -> None:
    url = _engine_url(real_pod)
    before = _served(url)
    with _client(fleet) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=8
        )
        assert raw.headers["x-factory-pool"] == REAL_BACKEND
        assert raw.headers["x-factory-jurisdiction"] == "EU"
        chat = raw.parse()
        assert chat.model == MODEL and chat.usage is not None and chat.usage.completion_tokens

        with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=8, stream=True,
            stream_options={"include_usage": True},
        ) as streamed:  # fmt: skip
            assert streamed.headers["x-factory-pool"] == REAL_BACKEND
            chunks = list(streamed.parse())
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in {"length", "stop"}
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens

        completion = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=6)
        assert completion.choices[0].text is not None
    # Three requests, counted by vLLM itself.
    wait_until(lambda: _served(url) - before >= 3, 10, what="vLLM to count the requests")
    assert _served(url) - before == 3


def test_the_routers_load_view_comes_from_the_real_engines_metrics(
    fleet: Fleet, real_pod: dict[str, Any]
) -> None:
    admin = {"Authorization": f"Bearer {fleet.env['admin_key']}"}
    with _client(fleet) as client:
        for _ in range(3):  # TTFT samples in the engine's histogram
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)

    def real_row() -> dict[str, Any] | None:
        reply = httpx.get(f"{fleet.env['router_admin_url']}/admin/explain", headers=admin,
                          params={"tenant": "eu-only", "model": MODEL}, timeout=10)  # fmt: skip
        rows = [r for r in reply.json()["candidates"] if r["pool"] == REAL_BACKEND]
        parts = rows[0].get("parts") if rows else None
        if parts and parts["load_source"].startswith("prometheus") and parts["engine_ttft_ms"]:
            return rows[0]
        return None

    # Prometheus scrapes every second and the router polls it every few: a few intervals.
    row = wait_until(real_row, 60, interval=1, what="the explain row to carry vLLM's metrics")
    assert row["jurisdiction"] == "EU" and row["eligible"] is True
    assert row["parts"]["ttft_source"] in {"engine", "observed"}


def test_dev_status_shows_which_pools_are_real(fleet: Fleet, real_pod: dict[str, Any]) -> None:
    done = fleet.factoryctl("dev", "status", timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("REGION"))
    table = [line.split() for line in lines[header + 1 :] if line.strip()]
    real = [r for r in table if r[2] == MODEL and r[3] == REAL_POOL]
    assert real and real[0][4] == "vllm", done.stdout
    others = [r for r in table if r[2] != MODEL]
    assert others and {r[4] for r in others} == {"sim"}, done.stdout
    rows = [line.split() for line in lines[:header]]
    component = next(r for r in rows if r and r[0] == "real-engine")
    assert component[1] == "running" and "on:" in " ".join(component), done.stdout


@pytest.fixture(scope="module")
def with_sim_fallback(fleet: Fleet, real_pod: dict[str, Any]) -> Iterator[None]:
    """The tiny model also on a simulated L4 pool in the EU; afterwards the factory as it was,
    and the real engine Ready again."""
    path = "/spec/pools/1"
    sim_pool = {"name": SIM_POOL, "region": "eu-west-1", "replicas": {"min": 1, "max": 1},
                "accelerator": {"kind": "nvidia", "type": "L4", "count": 1}}  # fmt: skip
    original = json.loads(fleet.cluster.kubectl("get", "inferencefactory", MODEL, "-n",
                                                NAMESPACE, "-o", "json"))["spec"]  # fmt: skip
    patch = [{"op": "add", "path": path, "value": sim_pool}]
    fleet.cluster.kubectl("patch", "inferencefactory", MODEL, "-n", NAMESPACE, "--type=json",
                          "-p", json.dumps(patch))  # fmt: skip
    try:
        _ready_pod(fleet, SIM_POOL, 120)
        yield
    finally:
        restore = [{"op": "replace", "path": "/spec", "value": original}]
        fleet.cluster.kubectl("patch", "inferencefactory", MODEL, "-n", NAMESPACE,
                              "--type=json", "-p", json.dumps(restore))  # fmt: skip
        wait_until(lambda: not _pods(fleet, SIM_POOL), 120, interval=1, what="the sim pool gone")
        _ready_pod(fleet, REAL_POOL, ENGINE_START_SECONDS)


def _stream(client: openai.OpenAI) -> tuple[str, str]:
    """(pool, jurisdiction) of one streamed answer, read to the end."""
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, stream=True
    ) as streamed:
        text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        assert text is not None
        return streamed.headers["x-factory-pool"], streamed.headers["x-factory-jurisdiction"]


def test_a_killed_real_engine_is_failed_over_within_the_jurisdiction(
    fleet: Fleet, with_sim_fallback: None
) -> None:
    pod = _ready_pod(fleet, REAL_POOL, 60)
    home = FleetHome(fleet.home)
    pid = running_pid(home, process_name(pod["metadata"]["uid"]))
    assert pid is not None, "the agent's record of the real engine's process"
    served: list[tuple[str, str]] = []
    errors: list[str] = []
    killed = threading.Event()
    after_kill: list[tuple[str, str]] = []

    def clients() -> None:
        with _client(fleet) as client:
            while len(after_kill) < 20:
                try:
                    answer = _stream(client)
                except openai.APIError as exc:  # a stream cut by the kill itself
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                (after_kill if killed.is_set() else served).append(answer)

    worker = threading.Thread(target=clients, daemon=True)
    worker.start()
    wait_until(lambda: any(p == REAL_BACKEND for p, _ in served), 60, interval=0.2,
               what="the real pool to serve some of the stream")  # fmt: skip
    os.killpg(pid, signal.SIGKILL)
    killed.set()
    worker.join(timeout=180)
    assert not worker.is_alive(), "requests after the kill did not finish"
    # Every request after the kill was answered, by the simulated pool, in the EU; at most
    # the stream that was on the engine when it died was cut (no failover after a first byte).
    assert len(errors) <= 1, errors
    assert {p for p, _ in after_kill[1:]} == {SIM_BACKEND}, after_kill
    assert {j for _, j in served + after_kill} == {"EU"}
    # The agent saw it die: an Event with the engine's last words, and the pod not Ready.
    events = wait_until(lambda: _events(fleet, pod, "EngineFailed"), 30, interval=1,
                        what="an EngineFailed event on the real engine's pod")  # fmt: skip
    assert "vLLM exited" in events[0]["message"]


def _events(fleet: Fleet, pod: dict[str, Any], reason: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.uid={pod['metadata']['uid']},reason={reason}"
    out = fleet.cluster.kubectl("get", "events", "-n", NAMESPACE, "-o", "json",
                                "--field-selector", selector)  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def test_a_flag_vllm_refuses_leaves_the_pod_not_ready_with_vllms_error(
    fleet: Fleet, with_sim_fallback: None
) -> None:
    """A misspelled flag, which vLLM refuses as it would on a GPU node; the rest serves."""
    spec = json.loads(fleet.cluster.kubectl("get", "inferencefactory", MODEL, "-n", NAMESPACE,
                                            "-o", "json"))["spec"]  # fmt: skip
    for pool in spec["pools"]:
        if pool["name"] == REAL_POOL:
            pool["engine"] = {"extraArgs": ["--enable-prefix-cachng"]}
    patch = {"spec": {"pools": spec["pools"]}}
    fleet.cluster.kubectl("patch", "inferencefactory", MODEL, "-n", NAMESPACE, "--type=merge",
                          "-p", json.dumps(patch))  # fmt: skip

    def refused() -> dict[str, Any] | None:
        for pod in _pods(fleet, REAL_POOL):
            args = pod["spec"]["containers"][0].get("args") or []
            if "--enable-prefix-cachng" in args:
                events = _events(fleet, pod, "EngineFailed")
                if events:
                    return {"pod": pod, "event": events[0]}
        return None

    found = wait_until(refused, ENGINE_START_SECONDS, interval=2,
                       what="vLLM to refuse the misspelled flag")  # fmt: skip
    assert "unrecognized arguments: --enable-prefix-cachng" in found["event"]["message"]
    assert not _ready(found["pod"])
    # The model is still served, by the simulated pool of the same jurisdiction.
    with _client(fleet) as client:
        for _ in range(3):
            assert _stream(client) == (SIM_BACKEND, "EU")
