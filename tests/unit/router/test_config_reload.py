"""Config reloads that cannot die silently (issue 13, item 5): a watcher survives a file
that goes missing, a loader that raises anything, a failing `apply`; every failure is
counted and the previous good value kept; a backends reload keeps the `--rtt` matrix."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from factory_router.app.reload import FileWatcher
from factory_router.main import Settings, build
from factory_router.policy.config import RouterConfig
from factory_router.policy.fleet import RttMatrix
from factory_router.policy.tenants import hash_key
from tests.unit.router.router_testkit import (
    KEYS,
    TENANTS_DOC,
    backend,
    engines,
    router,
    wait_until,
)


def _errors(server: Any, file: str) -> float:
    value: float = server.state.metrics.reload_errors.labels(file)._value.get()
    return value


async def test_tenants_file_missing_for_a_while_then_back(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(json.dumps(TENANTS_DOC))
    cfg = RouterConfig(reload_interval=0.02)
    async with (
        engines(1) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1")], config=cfg, tenants_file=path) as r,
        httpx.AsyncClient(base_url=r.url) as c,
    ):

        async def status(key: str) -> int:
            resp = await c.get("/v1/models", headers={"authorization": f"Bearer {key}"})
            return resp.status_code

        path.unlink()  # e.g. a Secret volume between two symlink swaps
        await wait_until(lambda: _errors(r, "tenants") == 1, timeout=5, what="error counted")
        assert await status(KEYS["eu"]) == 200  # the previous good table serves on
        rotated = json.loads(json.dumps(TENANTS_DOC))
        rotated["tenants"][0]["api_keys_sha256"] = [hash_key("sk-eu-0002")]
        path.write_text(json.dumps(rotated))

        async def rotated_in() -> bool:
            return await status("sk-eu-0002") == 200 and await status(KEYS["eu"]) == 401

        await wait_until(rotated_in, timeout=5, what="the file's return, reloaded")
        assert _errors(r, "tenants") == 1  # counted once, not once per check while missing


async def test_a_watcher_survives_any_exception_and_keeps_the_last_good_value(
    tmp_path: Path,
) -> None:
    path = tmp_path / "value.txt"
    path.write_text("1")
    applied: list[int] = []
    errors: list[str] = []

    def load(p: Path) -> int:
        text = p.read_text()
        if text == "boom":
            raise RuntimeError("a loader bug")
        return int(text)  # "x": ValueError, not a PolicyError

    def apply(value: int) -> None:
        if value < 0:
            raise OSError("cannot apply")
        applied.append(value)

    watcher = FileWatcher("value", path, load, apply, errors.append)
    task = asyncio.create_task(watcher.run(0.01))
    try:
        for i, text in enumerate(["x", "boom", "-1", "2"]):
            path.write_text(text)
            await wait_until(
                lambda i=i: len(errors) + len(applied) == i + 1, timeout=5, what=f"{text!r} seen"
            )
            assert not task.done()
        assert applied == [2]
        assert [e.split(":")[0] for e in errors] == ["ValueError", "RuntimeError", "OSError"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_backends_reload_keeps_the_rtt_matrix(tmp_path: Path) -> None:
    def backends_doc(*pools: str) -> dict[str, Any]:
        return {
            "regions": [{"name": "eu-west-1", "jurisdiction": "EU"},
                        {"name": "us-east-1", "jurisdiction": "US"}],
            "rtt_ms": {"eu-west-1": {"us-east-1": 999}},  # --rtt wins over the file's own
            "backends": [{"model": "m", "pool": p, "region": "eu-west-1",
                          "url": f"http://127.0.0.1:{9 + i}"} for i, p in enumerate(pools)],
        }  # fmt: skip

    tenants, backends, rtt = tmp_path / "t.yaml", tmp_path / "b.yaml", tmp_path / "rtt.yaml"
    tenants.write_text(json.dumps(TENANTS_DOC))
    backends.write_text(json.dumps(backends_doc("eu-a")))
    rtt.write_text(json.dumps({"eu-west-1": {"us-east-1": 80}}))
    settings = Settings(
        region="eu-west-1", tenants=tenants, backends=backends, rtt=rtt,
        listen="127.0.0.1:0", admin_listen="127.0.0.1:0", probe_interval=0,
    )  # fmt: skip
    expected = RttMatrix.from_nested({"eu-west-1": {"us-east-1": 80}})
    server = build(settings)
    assert server.state.fleet.rtt == expected
    # The watcher checks every second (RouterConfig.reload_interval): this waits about one.
    async with server:
        backends.write_text(json.dumps(backends_doc("eu-a", "eu-b")))
        await wait_until(
            lambda: len(server.state.fleet.backends) == 2, timeout=5, what="backends reload"
        )
        assert server.state.fleet.rtt == expected
        backends.unlink()
        await wait_until(lambda: _errors(server, "backends") == 1, timeout=5, what="counted")
        assert len(server.state.fleet.backends) == 2 and server.state.fleet.rtt == expected
