"""SimHost add/remove, the HTTP control API, fault hooks and the factory-sim CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from factory_sim.server import ControlServer, EngineConfig, EngineHandle, SimHost

from .conftest import scrape, value, wait_until

SIM_ROOT = Path(__file__).resolve().parents[3] / "sim"


async def _refused(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(f"{url}/health"):
            return False
    except aiohttp.ClientConnectionError:
        return True


async def test_add_and_remove(host: SimHost, http: aiohttp.ClientSession) -> None:
    a = await host.add(EngineConfig(model_name="m", name="pod-a", time_scale=0.1))
    b = await host.add(EngineConfig(model_name="m", profile="trn1", time_scale=0.1))
    assert a.port != b.port and a.url.startswith("http://127.0.0.1:")
    assert set(host.engines) == {"pod-a", b.id}
    with pytest.raises(ValueError, match="already"):
        await host.add(EngineConfig(model_name="m", name="pod-a"))
    await host.remove("pod-a")
    assert set(host.engines) == {b.id}
    assert await _refused(http, a.url)
    async with http.get(f"{b.url}/health") as resp:
        assert resp.status == 200


async def test_remove_ends_in_flight_streams(host: SimHost, http: aiohttp.ClientSession) -> None:
    handle = await host.add(EngineConfig(model_name="m", profile="l4"))
    body = {"model": "m", "prompt": "x", "max_tokens": 2000, "stream": True, "ignore_eos": True}
    async with http.post(f"{handle.url}/v1/completions", json=body) as resp:
        await resp.content.readline()
        await host.remove(handle)
        rest = await resp.read()
    assert b'"finish_reason":"abort"' in rest and rest.endswith(b"data: [DONE]\n\n")


async def test_faults_error_stall_unhealthy(host: SimHost, http: aiohttp.ClientSession) -> None:
    handle = await host.add(EngineConfig(model_name="m", time_scale=0.1))
    control = ControlServer(host)
    await control.start()
    try:
        base = f"http://127.0.0.1:{control.port}"
        faults = {"error_status": 503, "error_count": 1, "unhealthy": True}
        async with http.put(f"{base}/engines/{handle.id}/faults", json=faults) as resp:
            assert resp.status == 200
        body = {"model": "m", "prompt": "x", "max_tokens": 1}
        async with http.post(f"{handle.url}/v1/completions", json=body) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == 503
        async with http.post(f"{handle.url}/v1/completions", json=body) as resp:
            assert resp.status == 200  # error_count was 1
        async with http.get(f"{handle.url}/health") as resp:
            assert resp.status == 503

        async with http.put(f"{base}/engines/{handle.id}/faults", json={"stall_s": 60}) as resp:
            assert resp.status == 200
        stalled = asyncio.ensure_future(http.post(f"{handle.url}/v1/completions", json=body))
        await wait_until(lambda: value_of_requests(handle) >= 3)
        assert not stalled.done()
        async with http.delete(f"{base}/engines/{handle.id}/faults") as resp:
            assert resp.status == 200
        async with await stalled as resp:
            assert resp.status == 200
    finally:
        await control.stop()


def value_of_requests(handle: EngineHandle) -> float:
    total = 0.0
    for metric in handle.engine.metrics.registry.collect():
        for s in metric.samples:
            if s.name == "factory_sim_requests_total":
                total += s.value
    return total


async def test_control_api_lifecycle(host: SimHost, http: aiohttp.ClientSession) -> None:
    control = ControlServer(host)
    await control.start()
    try:
        base = f"http://127.0.0.1:{control.port}"
        config = {
            "model_name": "llama",
            "profile": "inf2",
            "region": "eu-central-1",
            "name": "pod-1",
            "labels": {"pool": "p"},
            "time_scale": 0.1,
        }
        async with http.post(f"{base}/engines", json=config) as resp:
            assert resp.status == 201
            created = await resp.json()
        assert created["id"] == "pod-1" and created["port"] > 0
        async with http.get(f"{base}/engines") as resp:
            listed = (await resp.json())["engines"]
        assert [e["id"] for e in listed] == ["pod-1"] and listed[0]["region"] == "eu-central-1"
        samples = await scrape(http, host.engines["pod-1"])
        assert value(samples, "vllm:num_requests_running", model_name="llama") == 0
        async with http.post(f"{base}/engines", json={"profile": "h100"}) as resp:
            assert resp.status == 400
        async with http.post(f"{base}/engines", json={**config, "host": "0.0.0.0"}) as resp:
            assert resp.status == 400
        async with http.delete(f"{base}/engines/pod-1") as resp:
            assert resp.status == 200
        async with http.delete(f"{base}/engines/pod-1") as resp:
            assert resp.status == 404
        assert await _refused(http, created["url"])
    finally:
        await control.stop()


async def test_cli_serve(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    config = tmp_path / "engines.yaml"
    config.write_text("engines:\n  - {model_name: m, profile: l4, name: e1, region: r1}\n")
    env = {**os.environ, "PYTHONPATH": f"{SIM_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "factory_sim.main",
        "serve",
        "--control-port",
        "0",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        ready = json.loads(line)
        assert [e["id"] for e in ready["engines"]] == ["e1"]
        async with http.get(f"{ready['control_url']}/engines") as resp:
            assert (await resp.json())["engines"][0]["region"] == "r1"
        async with http.get(f"{ready['engines'][0]['url']}/v1/models") as resp:
            assert (await resp.json())["data"][0]["id"] == "m"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0


async def test_client_disconnect_frees_the_slot(host: SimHost, http: aiohttp.ClientSession) -> None:
    handle = await host.add(EngineConfig(model_name="m", profile="l4"))
    body = {"model": "m", "prompt": "x", "max_tokens": 2000, "stream": True, "ignore_eos": True}
    resp = await http.post(f"{handle.url}/v1/completions", json=body)
    await resp.content.readline()
    assert len(handle.engine.running) == 1
    resp.close()  # drop the connection mid-stream

    async def aborted() -> bool:
        samples = await scrape(http, handle)
        return (
            value(samples, "vllm:request_success_total", finished_reason="abort") == 1
            and value(samples, "vllm:num_requests_running") == 0
        )

    await wait_until(aborted)
