"""Metering end to end: the official `openai` client through a real router process to real
simulator processes (`factory-sim serve`), streaming and not, with and without
`include_usage`, and a client that leaves mid-stream.

What the router counted (`factory_router_*_tokens_total` on its admin port) and wrote (one
access line per request: its usage record) is compared with the engines' own counters
(`vllm:prompt_tokens_total`, `vllm:generation_tokens_total`) over the same requests: each
tenant's requests go to an engine of their own (eu-only to eu-west-1, global narrowed with
`x-factory-residency: US` to us-east-1), so every figure must match exactly.
No cluster is needed; everything binds 127.0.0.1 and is stopped by the fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from factory_router.policy.tenants import hash_key
from factoryctl.home import free_port
from tests.integration.router.processes import metric_sum, stop_process
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[3]
KEYS = {"eu": "sk-meter-eu", "global": "sk-meter-global"}
TENANTS = {
    "admin_keys_sha256": [hash_key("sk-meter-admin")],
    "tenants": [
        {"name": "eu-only", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key(KEYS["eu"])]},
        {
            "name": "global",
            "jurisdictions": ["EU", "US"],
            "api_keys_sha256": [hash_key(KEYS["global"])],
        },
    ],
}
ENGINES = {"eu": "eu-west-1", "us": "us-east-1"}
TIME_SCALE = 0.05  # simulated durations x0.05: a 2000-token stream lasts seconds, not minutes
START_SECONDS = 60


@dataclass
class Fleet:
    router_url: str
    admin_url: str
    engines: dict[str, str]  # name -> URL
    access_log: Path

    def engine_tokens(self, name: str) -> tuple[float, float]:
        text = httpx.get(self.engines[name] + "/metrics", timeout=5).text
        return metric_sum(text, "vllm:prompt_tokens_total"), metric_sum(
            text, "vllm:generation_tokens_total"
        )

    def engine_running(self, name: str) -> float:
        text = httpx.get(self.engines[name] + "/metrics", timeout=5).text
        return metric_sum(text, "vllm:num_requests_running")

    def router_tokens(self, tenant: str, source: str = "engine") -> tuple[float, float]:
        text = httpx.get(self.admin_url + "/metrics", timeout=5).text
        where = f'tenant="{tenant}"'
        prompt = metric_sum(text, "factory_router_prompt_tokens_total", where)
        completion = metric_sum(
            text, "factory_router_completion_tokens_total", where, f'source="{source}"'
        )
        return prompt, completion

    def records(self) -> list[dict[str, Any]]:
        lines = self.access_log.read_text().splitlines()
        return [json.loads(x) for x in lines if '"factory_router.access"' in x]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("metering")
    engines = [
        {"model_name": "llama", "profile": "h100", "name": name, "region": region,
         "time_scale": TIME_SCALE}
        for name, region in ENGINES.items()
    ]  # fmt: skip
    (home / "engines.yaml").write_text(json.dumps({"engines": engines}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "router"), str(ROOT / "sim")])}
    sim = subprocess.Popen(
        [sys.executable, "-m", "factory_sim.main", "serve", "--control-port", "0",
         "--config", str(home / "engines.yaml")],
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    router: subprocess.Popen[bytes] | None = None
    try:
        assert sim.stdout is not None
        ready = json.loads(sim.stdout.readline())
        urls = {e["id"]: e["url"] for e in ready["engines"]}
        (home / "tenants.yaml").write_text(json.dumps(TENANTS))
        (home / "backends.yaml").write_text(
            json.dumps(
                {
                    "regions": [
                        {"name": "eu-west-1", "jurisdiction": "EU"},
                        {"name": "us-east-1", "jurisdiction": "US"},
                    ],
                    "backends": [
                        {
                            "model": "llama",
                            "pool": f"llama-{name}",
                            "region": region,
                            "url": urls[name],
                            "pod": name,
                        }
                        for name, region in ENGINES.items()
                    ],
                }
            )
        )
        listen, admin = free_port(), free_port()
        log = home / "router.log"
        with log.open("wb") as stderr:
            router = subprocess.Popen(
                [sys.executable, "-m", "factory_router.main",
                 "--listen", f"127.0.0.1:{listen}", "--admin-listen", f"127.0.0.1:{admin}",
                 "--region", "eu-west-1", "--tenants", str(home / "tenants.yaml"),
                 "--backends", str(home / "backends.yaml"), "--probe-interval", "0",
                 "--log-level", "WARNING"],
                stderr=stderr, env=env,
            )  # fmt: skip
        result = Fleet(f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}", urls, log)

        def router_ready() -> bool:
            try:
                return httpx.get(result.router_url + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(router_ready, timeout=START_SECONDS, interval=0.2, what="router ready")
        yield result
    finally:
        if router is not None:
            stop_process(router)
        stop_process(sim)
        if sim.stdout is not None:
            sim.stdout.close()


def _client(fleet: Fleet, who: str) -> openai.OpenAI:
    headers = {"x-factory-residency": "US"} if who == "global" else {}
    return openai.OpenAI(
        base_url=fleet.router_url + "/v1",
        api_key=KEYS[who],
        max_retries=0,
        timeout=60,
        default_headers=headers,
    )


def _requests(client: openai.OpenAI) -> dict[str, Any]:
    """One of each kind; returns what the client itself saw of usage."""
    seen: dict[str, Any] = {"usage_chunks": 0, "usage": []}
    messages = [{"role": "user", "content": "tell me about metering, please"}]
    chat = client.chat.completions.create(model="llama", messages=messages, max_tokens=9)
    assert chat.usage is not None
    seen["usage"].append((chat.usage.prompt_tokens, chat.usage.completion_tokens))
    comp = client.completions.create(model="llama", prompt="once upon a time", max_tokens=7)
    assert comp.usage is not None
    seen["usage"].append((comp.usage.prompt_tokens, comp.usage.completion_tokens))
    # Streams whose client did not ask for usage: no option, and include_usage false.
    for options in (None, {"include_usage": False}):
        extra = {} if options is None else {"stream_options": options}
        stream = client.chat.completions.create(
            model="llama", messages=messages, max_tokens=11, stream=True, **extra
        )
        chunks = list(stream)
        assert chunks and all(c.usage is None and c.choices for c in chunks)
    stream = client.completions.create(model="llama", prompt="abc", max_tokens=5, stream=True)
    chunks = list(stream)
    assert chunks and all(c.usage is None and c.choices for c in chunks)
    # A stream whose client asked: the usage chunk is relayed, last.
    stream = client.chat.completions.create(
        model="llama",
        messages=messages,
        max_tokens=13,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    seen["usage_chunks"] += 1
    seen["usage"].append((chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens))
    return seen


def test_tenants_counters_and_records_match_the_engines_own(fleet: Fleet) -> None:
    before = {name: fleet.engine_tokens(name) for name in ENGINES}
    router_before = {t: fleet.router_tokens(t) for t in ("eu-only", "global")}
    records_before = len(fleet.records())
    with _client(fleet, "eu") as eu, _client(fleet, "global") as glob:
        seen_eu = _requests(eu)
        seen_global = _requests(glob)
    # Streams: the engine's counters are final before it writes [DONE].
    engine = {
        name: tuple(a - b for a, b in zip(fleet.engine_tokens(name), before[name], strict=True))
        for name in ENGINES
    }
    for tenant, name in (("eu-only", "eu"), ("global", "us")):
        after = fleet.router_tokens(tenant)
        counted = tuple(a - b for a, b in zip(after, router_before[tenant], strict=True))
        assert counted == engine[name], (tenant, counted, engine)
        assert counted[0] > 0 and counted[1] > 0

    def all_written() -> list[dict[str, Any]]:
        records = fleet.records()[records_before:]
        return records if len(records) == 12 else []

    records = wait_until(all_written, timeout=10, what="12 access lines")
    for tenant, name in (("eu-only", "eu"), ("global", "us")):
        mine = [r for r in records if r["tenant"] == tenant]
        assert len(mine) == 6
        assert {r["pool"] for r in mine} == {f"llama-{name}"}
        assert {r["region"] for r in mine} == {ENGINES[name]}
        # 499: the `openai` client closes a stream at `data: [DONE]`, at times before the
        # router has relayed the end of the chunked body; the usage was complete by then.
        assert {r["status"] for r in mine} <= {200, 499}
        assert {r["usage"] for r in mine} == {"engine"}
        totals = (sum(r["prompt_tokens"] for r in mine), sum(r["completion_tokens"] for r in mine))
        assert totals == engine[name]
        assert all(r["latency_ms"] > 0 and r["model"] == "llama" for r in mine)
        # Never the prompt: no field of the record repeats what was sent.
        assert "metering" not in json.dumps(mine) and "once upon" not in json.dumps(mine)
        # What the client saw of usage (non-streaming answers, the chunk it asked for)
        # is what the records say of those requests.
        seen = seen_eu if tenant == "eu-only" else seen_global
        assert seen["usage_chunks"] == 1
        pairs = [(r["prompt_tokens"], r["completion_tokens"]) for r in mine]
        assert all(pairs.count(pair) >= seen["usage"].count(pair) for pair in seen["usage"])


def test_a_client_that_did_not_ask_gets_no_usage_bytes(fleet: Fleet) -> None:
    body = {
        "model": "llama",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 6,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {KEYS['eu']}"}
    for options in (None, {"include_usage": False, "continuous_usage_stats": True}, None):
        sent = body if options is None else {**body, "stream_options": options}
        reply = httpx.post(
            fleet.router_url + "/v1/chat/completions", json=sent, headers=headers, timeout=30
        )
        assert reply.status_code == 200
        assert b'"usage"' not in reply.content and b'"choices":[]' not in reply.content
        assert reply.content.endswith(b"data: [DONE]\n\n")
    asked = httpx.post(
        fleet.router_url + "/v1/chat/completions",
        json={**body, "stream_options": {"include_usage": True}},
        headers=headers,
        timeout=30,
    )
    events = [e for e in asked.content.split(b"\n\n") if e]
    assert b'"choices":[]' in events[-2] and b'"usage"' in events[-2]
    assert events[-1] == b"data: [DONE]"


def test_a_stream_cut_short_records_what_was_generated(fleet: Fleet) -> None:
    before = fleet.engine_tokens("eu")
    estimated_before = fleet.router_tokens("eu-only", source="estimated")[1]
    records_before = len(fleet.records())
    received = 0
    with _client(fleet, "eu") as client:
        stream = client.chat.completions.create(
            model="llama",
            messages=[{"role": "user", "content": "go on"}],
            max_tokens=2000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            received += bool(chunk.choices and chunk.choices[0].delta.content)
            if received == 5:
                break
        stream.close()  # the client leaves mid-stream

    wait_until(lambda: fleet.engine_running("eu") == 0, timeout=20, what="engine aborted")

    def cut_record() -> dict[str, Any] | None:
        for record in fleet.records()[records_before:]:
            if record["status"] == 499:
                return record
        return None

    record = wait_until(cut_record, timeout=10, what="the cut request's access line")
    assert record is not None and record["usage"] == "estimated"
    assert record["prompt_tokens"] is None
    generated = fleet.engine_tokens("eu")[1] - before[1]
    # Counted: the content events the router relayed (one token each); the engine may
    # have made a few more that never left it before it saw the disconnect.
    assert received <= record["completion_tokens"] <= generated < 2000
    estimated = fleet.router_tokens("eu-only", source="estimated")[1] - estimated_before
    assert estimated == record["completion_tokens"]


def test_lax_booleans_are_metered_as_the_engine_reads_them(fleet: Fleet) -> None:
    """Review: `"stream": 1`, `"true"`, `"yes"` or `include_usage: 0`, `"false"` streamed
    without a usage chunk (the router acted on JSON true only; the engine's pydantic reads
    these): metered "estimated", prompt tokens 0. Now each is metered from the engine's
    usage, equal to its own counters, and the client that did not ask gets no usage."""
    headers = {"authorization": f"Bearer {KEYS['eu']}"}
    body = {"model": "llama", "messages": [{"role": "user", "content": "word " * 50}]}
    shapes: list[dict[str, Any]] = [
        {"stream": 1},
        {"stream": "true"},
        {"stream": "yes"},
        {"stream": 1.0},
        {"stream": True, "stream_options": {"include_usage": 0}},
        {"stream": True, "stream_options": {"include_usage": "false"}},
    ]
    for shape in shapes:
        before, router_before = fleet.engine_tokens("eu"), fleet.router_tokens("eu-only")
        records_before = len(fleet.records())
        reply = httpx.post(
            fleet.router_url + "/v1/chat/completions",
            json={**body, "max_tokens": 5, **shape},
            headers=headers,
            timeout=30,
        )
        assert reply.status_code == 200, shape
        assert reply.content.endswith(b"data: [DONE]\n\n")
        assert b'"usage"' not in reply.content, shape
        engine = tuple(a - b for a, b in zip(fleet.engine_tokens("eu"), before, strict=True))
        counted = tuple(
            a - b for a, b in zip(fleet.router_tokens("eu-only"), router_before, strict=True)
        )
        assert counted == engine and engine[0] > 0, (shape, counted, engine)

        def written(n: int = records_before) -> list[dict[str, Any]]:
            return fleet.records()[n:]

        (record,) = wait_until(written, timeout=10, what="the access line")
        assert record["usage"] == "engine"
        assert (record["prompt_tokens"], record["completion_tokens"]) == engine
