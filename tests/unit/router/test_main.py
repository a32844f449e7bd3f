"""The `factory-router` process: flags, refusal to start, serving, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from factory_router.main import Settings
from factory_router.policy.policies import PolicyName
from tests.unit.router.router_testkit import TENANTS_DOC, auth, engines, wait_until

ROUTER_DIR = Path(__file__).resolve().parents[3] / "router"


def test_settings_from_flags_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACTORY_ROUTER_PROMETHEUS_URL", "http://127.0.0.1:9090")
    s = Settings(
        _cli_parse_args=[
            "--region",
            "eu-west-1",
            "--tenants",
            "t.yaml",  # type: ignore[call-arg]
            "--backends",
            "b.yaml",
            "--policy",
            "least-request",
            "--first-byte-timeout",
            "2.5",
            "--client-idle-timeout",
            "10",
            "--max-head-bytes",
            "8192",
        ]
    )
    assert (
        PolicyName(s.policy) is PolicyName.LEAST_REQUEST
        and s.prometheus_url == "http://127.0.0.1:9090"
    )
    config = s.router_config()
    assert config.timeouts.first_byte == 2.5 and config.timeouts.client_idle == 10
    assert config.limits.max_head_bytes == 8192 and config.timeouts.client_request == 60
    with pytest.raises(ValidationError):
        Settings(_cli_parse_args=["--region", "r", "--tenants", "t"])  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings(
            _cli_parse_args=[
                "--region",
                "r",
                "--tenants",
                "t",
                "--backends",
                "b",  # type: ignore[call-arg]
                "--kubeconfig",
                "k",
            ]
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(*args: str) -> asyncio.subprocess.Process:
    # A free port for the admin listener: its default (9091) may be taken on this machine.
    env = {
        **os.environ,
        "PYTHONPATH": str(ROUTER_DIR),
        "FACTORY_ROUTER_ADMIN_LISTEN": "127.0.0.1:0",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "factory_router.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_refuses_to_start_without_a_usable_policy(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("backends: []\n")
    for content in ("", "tenants: []\n", "{broken"):
        (tmp_path / "t.yaml").write_text(content)
        proc = await _run(
            "--region",
            "eu-west-1",
            "--tenants",
            str(tmp_path / "t.yaml"),
            "--backends",
            str(tmp_path / "b.yaml"),
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2, err
        assert b"refusing to start" in err


async def test_refuses_to_start_with_an_unusable_endpoint_key(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("backends: []\n")
    (tmp_path / "t.yaml").write_text(json.dumps(TENANTS_DOC))
    (tmp_path / "key").write_text("\n")
    proc = await _run(
        "--region", "eu-west-1", "--tenants", str(tmp_path / "t.yaml"),
        "--backends", str(tmp_path / "b.yaml"), "--endpoint-key-file", str(tmp_path / "key"),
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2, err
    assert b"refusing to start" in err and b"endpoint key file" in err


async def test_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    async with engines(1, chunks=10, chunk_delay=0.03) as (eu,):
        (tmp_path / "t.yaml").write_text(json.dumps(TENANTS_DOC))
        (tmp_path / "b.yaml").write_text(
            json.dumps(
                {
                    "regions": [{"name": "eu-west-1", "jurisdiction": "EU"}],
                    "backends": [
                        {"model": "m", "pool": "eu-a", "region": "eu-west-1", "url": eu.url}
                    ],
                }
            )
        )
        port = _free_port()
        proc = await _run(
            "--listen",
            f"127.0.0.1:{port}",
            "--region",
            "eu-west-1",
            "--tenants",
            str(tmp_path / "t.yaml"),
            "--backends",
            str(tmp_path / "b.yaml"),
            "--grace-period",
            "5",
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:

                async def ready() -> bool:
                    try:
                        return (await c.get("/readyz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await wait_until(ready, timeout=30, what="router ready")
                async with c.stream(
                    "POST",
                    "/v1/chat/completions",
                    headers=auth("eu"),
                    json={"model": "m", "messages": [], "stream": True},
                ) as r:
                    lines = r.aiter_lines()
                    await anext(lines)
                    proc.send_signal(signal.SIGTERM)
                    rest = [x async for x in lines]
                assert rest[-2:] == ["data: [DONE]", ""] or "data: [DONE]" in rest
            await asyncio.wait_for(proc.wait(), 15)
            assert proc.returncode == 0
            assert proc.stderr is not None
            logs = (await proc.stderr.read()).decode()
            access = [json.loads(x) for x in logs.splitlines() if '"factory_router.access"' in x]
            assert access and access[0]["tenant"] == "eu-only" and access[0]["status"] == 200
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
