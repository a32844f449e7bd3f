"""Each engine's request counts in the control API, kept for engines already removed."""

from __future__ import annotations

import aiohttp

from factory_sim.server import ControlServer, SimHost

from .conftest import FAST


async def test_counts_survive_removal(host: SimHost, http: aiohttp.ClientSession) -> None:
    control = ControlServer(host)
    await control.start()
    try:
        base = f"http://127.0.0.1:{control.port}"
        async with http.post(f"{base}/engines", json={"model_name": "m", "name": "old",
                                                      "time_scale": FAST}) as resp:  # fmt: skip
            assert resp.status == 201
            url = (await resp.json())["url"]
        for max_tokens in (1, 2, 3):
            body = {"model": "m", "prompt": "hi", "max_tokens": max_tokens, "ignore_eos": True}
            async with http.post(f"{url}/v1/completions", json=body) as resp:
                assert resp.status == 200
        async with http.get(f"{url}/v1/models") as resp:  # not a completion: not counted
            assert resp.status == 200
        async with http.get(f"{base}/engines") as resp:
            listed = await resp.json()
        expected = {"received": 3, "length": 3, "stop": 0, "abort": 0, "error": 0}
        assert listed["engines"][0]["requests"] == expected
        assert listed["retired"] == []
        async with http.delete(f"{base}/engines/old") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/engines") as resp:
            listed = await resp.json()
        assert listed["engines"] == []
        assert [(e["id"], e["requests"]) for e in listed["retired"]] == [("old", expected)]
    finally:
        await control.stop()
