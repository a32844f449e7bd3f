"""An engine that plays a bad revision: slower, erroring, answering otherwise, slow to load.

Answers are deterministic per revision: greedy requests get the same text on every engine
of one `answer_seed`, another text under another seed, so a golden prompt tells them apart.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from pydantic import ValidationError

from factory_sim.engine import Behaviour, SimEngine
from factory_sim.server import ControlServer, EngineConfig, EngineHandle, SimHost

from .conftest import FAST, wait_until

PROMPTS = ("What is the capital of Ireland?", "Reply with the word ok.", "Count to five.")


async def _answer(http: aiohttp.ClientSession, handle: EngineHandle, prompt: str,
                  **sampling: object) -> str:  # fmt: skip
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": 24,
            **sampling}  # fmt: skip
    async with http.post(f"{handle.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        text: str = (await resp.json())["choices"][0]["message"]["content"]
    return text


async def _answers(http: aiohttp.ClientSession, handle: EngineHandle) -> list[str]:
    return [await _answer(http, handle, p, temperature=0) for p in PROMPTS]


async def test_greedy_answers_are_deterministic_per_revision(
    host: SimHost, http: aiohttp.ClientSession
) -> None:
    stable = await host.add(EngineConfig(model_name="m", time_scale=FAST))
    same = await host.add(EngineConfig(model_name="m", time_scale=FAST, seed=9))
    other = await host.add(
        EngineConfig(model_name="m", time_scale=FAST, behaviour=Behaviour(answer_seed="b"))
    )
    golden = await _answers(http, stable)
    assert await _answers(http, stable) == golden  # asked again
    assert await _answers(http, same) == golden  # another replica of the same revision
    differing = [a != b for a, b in zip(golden, await _answers(http, other), strict=True)]
    assert all(differing), differing
    # A seeded request is reproducible within a revision and differs across revisions.
    seeded = await _answer(http, stable, PROMPTS[0], seed=3)
    assert await _answer(http, same, PROMPTS[0], seed=3) == seeded
    assert await _answer(http, other, PROMPTS[0], seed=3) != seeded


async def test_slow_engine_takes_that_much_longer(
    host: SimHost, http: aiohttp.ClientSession
) -> None:
    healthy = await host.add(EngineConfig(model_name="m", profile="l4", time_scale=FAST))
    slow = await host.add(
        EngineConfig(model_name="m", profile="l4", time_scale=FAST, behaviour=Behaviour(slow=3))
    )
    body = {"model": "m", "prompt": "x" * 400, "max_tokens": 40, "ignore_eos": True}

    async def elapsed(handle: EngineHandle) -> float:
        started = time.monotonic()
        async with http.post(f"{handle.url}/v1/completions", json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["usage"]["completion_tokens"] == 40
        return time.monotonic() - started

    # Side by side, so that a busy machine slows both alike.
    fast_s, slow_s = await asyncio.gather(elapsed(healthy), elapsed(slow))
    assert slow_s > 2.0 * fast_s, (fast_s, slow_s)


def _draws(config: EngineConfig, n: int) -> list[int | None]:
    engine = SimEngine(config)
    return [engine.draw_error() for _ in range(n)]


def test_error_rate_is_a_seeded_share_of_requests() -> None:
    config = EngineConfig(model_name="m", name="pod-a", behaviour=Behaviour(error_rate=0.05))
    first = _draws(config, 2000)
    assert first == _draws(config, 2000)  # the same engine fails the same requests
    failed = [d for d in first if d is not None]
    assert set(failed) == {500}
    assert 60 <= len(failed) <= 140, len(failed)  # 5% of 2000, loosely
    assert not any(_draws(EngineConfig(model_name="m", name="pod-a"), 500))


async def test_erroring_engine_answers_vllm_shaped_errors(
    host: SimHost, http: aiohttp.ClientSession
) -> None:
    handle = await host.add(
        EngineConfig(
            model_name="m", time_scale=FAST, behaviour=Behaviour(error_rate=1.0, error_status=503)
        )
    )
    body = {"model": "m", "prompt": "hi", "max_tokens": 2}
    async with http.post(f"{handle.url}/v1/completions", json=body) as resp:
        assert resp.status == 503
        error = (await resp.json())["error"]
    assert error["code"] == 503 and "bad revision" in error["message"]
    async with http.get(f"{handle.url}/health") as resp:
        assert resp.status == 200  # alive and ready: only its answers are bad


async def test_loading_engine_is_not_ready_until_loaded(
    host: SimHost, http: aiohttp.ClientSession
) -> None:
    handle = await host.add(EngineConfig(model_name="m", behaviour=Behaviour(load_s=1.0)))
    started = time.monotonic()
    async with http.get(f"{handle.url}/health") as resp:
        assert resp.status == 503
    body = {"model": "m", "prompt": "hi", "max_tokens": 2}
    async with http.post(f"{handle.url}/v1/completions", json=body) as resp:
        assert resp.status == 503

    async def healthy() -> bool:
        async with http.get(f"{handle.url}/health") as resp:
            return resp.status == 200

    await wait_until(healthy, timeout=10, interval=0.05)
    assert time.monotonic() - started >= 0.9
    async with http.post(f"{handle.url}/v1/completions", json=body) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    "behaviour",
    [{"slow": 0.5}, {"error_rate": 1.5}, {"error_status": 200}, {"load_s": -1}, {"typo": 1}],
)
def test_behaviour_out_of_range_is_refused(behaviour: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        EngineConfig.model_validate({"model_name": "m", "behaviour": behaviour})


async def test_control_api_takes_a_behaviour(host: SimHost, http: aiohttp.ClientSession) -> None:
    control = ControlServer(host)
    await control.start()
    try:
        base = f"http://127.0.0.1:{control.port}"
        good = {"model_name": "m", "name": "bad", "behaviour": {"slow": 3, "answer_seed": "b"}}
        async with http.post(f"{base}/engines", json=good) as resp:
            assert resp.status == 201
        assert host.engines["bad"].config.behaviour == Behaviour(slow=3, answer_seed="b")
        wrong = {"model_name": "m", "behaviour": {"slowness": 3}}
        async with http.post(f"{base}/engines", json=wrong) as resp:
            assert resp.status == 400
            assert "slowness" in (await resp.json())["error"]["message"]
    finally:
        await control.stop()
