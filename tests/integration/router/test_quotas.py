"""Quotas under load (issue 19 item 2): two real router processes share one real
`redis-server` in front of a real simulator process (`factory-sim serve`).

- Shared: a tenant pushed past its tokens-per-minute limit through both routers gets 429
  in OpenAI's shape with `Retry-After` and `x-ratelimit-*`; the tokens admitted across both
  routers stay within 5% of what the limit allows over the run (capacity + rate x T, the
  token bucket's bound); another tenant, loaded at the same time, gets no 429. The
  official `openai` client, told to retry, waits `Retry-After` and gets through.
- Redis killed mid-run: requests keep flowing (no 5xx), each router switches to its share
  (limit / 2), `/readyz` details and `factory_router_quota_redis_up` say so, and each
  router's admissions stay within its share's bound.
- Redis back (same port): both routers share the limit again.
- The tenants file changed: the new limit applies without a restart.

Needs `redis-server` 7.0 (`.venv/bin/factoryctl dev tools` installs it into the toolchain
cache): the test fails without it, it never skips. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis as redis_py

from factory_router.policy.tenants import Tenant, hash_key
from factory_router.quota.buckets import CHAT_PATH, QuotaExceeded, buckets_of
from factory_router.quota.redis_store import bucket_key, lease_key
from factory_router.quota.service import QuotaConfig, QuotaService, Ticket, _limits
from factoryctl.home import free_port
from factoryctl.redis_server import find_redis
from tests.integration.router.processes import stop_process
from tests.support.waiting import async_wait_until, wait_until

ROOT = Path(__file__).resolve().parents[3]
KEYS = {"limited": "sk-quota-limited-0001", "other": "sk-quota-other-00001"}
TPM = 6000  # the limited tenant's tokens per minute: 100 tokens a second
RATE = TPM / 60
TENANTS = {
    "admin_keys_sha256": [hash_key("sk-quota-admin-00001")],
    "tenants": [
        {
            "name": "limited",
            "jurisdictions": ["EU"],
            "api_keys_sha256": [hash_key(KEYS["limited"])],
            "tokens_per_minute": TPM,
        },
        {
            "name": "other",
            "jurisdictions": ["EU"],
            "api_keys_sha256": [hash_key(KEYS["other"])],
            "tokens_per_minute": 10_000_000,
            "requests_per_minute": 100_000,
        },
    ],
}
BODY: dict[str, Any] = {
    "model": "llama",
    "messages": [{"role": "user", "content": "count to forty"}],
    "max_tokens": 40,
    "ignore_eos": True,  # exactly max_tokens: the reservation is the usage but the prompt
}
TIME_SCALE = 0.05
START_SECONDS = 60
RUN_SECONDS = 6.0
PACE_SECONDS = 0.02  # a load thread's pause after a 429 (the 429s cost CPU, not tokens)


def _redis_binary() -> Path:
    binary = find_redis()
    if binary is None:
        pytest.fail(
            "redis-server 7.0 is not installed: run `.venv/bin/factoryctl dev tools` (it "
            "installs Debian's package into the toolchain cache) or `apt-get install -y "
            "redis-server`"
        )
    return binary


class Redis:
    """One `redis-server` on a fixed port, no persistence; kill and start again."""

    def __init__(self, binary: Path, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        argv = [str(self.binary), "--bind", "127.0.0.1", "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.folder)]  # fmt: skip
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self.answers, timeout=30, interval=0.1, what="redis-server answers PING")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@dataclass
class Router:
    url: str
    admin_url: str
    proc: subprocess.Popen[bytes]

    def details(self) -> dict[str, Any]:
        doc: dict[str, Any] = httpx.get(self.admin_url + "/readyz", timeout=5).json()
        return doc

    def redis_up(self) -> float:
        text = httpx.get(self.admin_url + "/metrics", timeout=5).text
        match = re.search(r"^factory_router_quota_redis_up (\S+)$", text, re.M)
        assert match, "factory_router_quota_redis_up missing"
        return float(match.group(1))


@dataclass
class Fleet:
    routers: list[Router]
    redis: Redis
    home: Path


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = Redis(_redis_binary(), tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis: Redis) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("quotas")
    engines = [{"model_name": "llama", "profile": "h100", "name": "eu", "region": "eu-west-1",
                "time_scale": TIME_SCALE}]  # fmt: skip
    (home / "engines.yaml").write_text(json.dumps({"engines": engines}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "router"), str(ROOT / "sim")])}
    sim = subprocess.Popen(
        [sys.executable, "-m", "factory_sim.main", "serve", "--control-port", "0",
         "--config", str(home / "engines.yaml")],
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    routers: list[Router] = []
    try:
        assert sim.stdout is not None
        ready = json.loads(sim.stdout.readline())
        url = ready["engines"][0]["url"]
        (home / "tenants.yaml").write_text(json.dumps(TENANTS))
        backends = {
            "regions": [{"name": "eu-west-1", "jurisdiction": "EU"}],
            "backends": [{"model": "llama", "pool": "llama-eu", "region": "eu-west-1",
                          "url": url, "pod": "eu"}],
        }  # fmt: skip
        (home / "backends.yaml").write_text(json.dumps(backends))
        for i in range(2):
            listen, admin = free_port(), free_port()
            with (home / f"router-{i}.log").open("wb") as stderr:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "factory_router.main",
                     "--listen", f"127.0.0.1:{listen}", "--admin-listen", f"127.0.0.1:{admin}",
                     "--region", "eu-west-1", "--tenants", str(home / "tenants.yaml"),
                     "--backends", str(home / "backends.yaml"), "--probe-interval", "0",
                     "--quota-redis-url", redis.url, "--quota-replicas", "2",
                     "--no-access-log", "--log-level", "WARNING"],
                    stderr=stderr, env=env,
                )  # fmt: skip
            routers.append(Router(f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}", proc))
        for r in routers:

            def ready_(r: Router = r) -> bool:
                try:
                    return httpx.get(r.url + "/readyz", timeout=2).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready_, timeout=START_SECONDS, interval=0.2, what="router ready")
        yield Fleet(routers, redis, home)
    finally:
        for r in routers:
            stop_process(r.proc)
        stop_process(sim)
        if sim.stdout is not None:
            sim.stdout.close()


@dataclass
class Outcome:
    router: int
    tenant: str
    status: int
    sent: float
    done: float
    tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    error: dict[str, Any] | None = None


def _load(
    fleet: Fleet, seconds: float, *, limited_threads: int = 2, mid_run: Any = None
) -> list[Outcome]:
    """Both tenants through both routers for `seconds`: `limited_threads` threads per router
    for the limited tenant, as fast as it admits them; one thread per router for the other.
    `mid_run` is called once, half-way. Returns every request's outcome."""
    stop = threading.Event()
    lock = threading.Lock()
    results: list[Outcome] = []

    def worker(index: int, tenant: str) -> None:
        router = fleet.routers[index]
        headers = {"authorization": f"Bearer {KEYS[tenant]}"}
        with httpx.Client(base_url=router.url, timeout=30, headers=headers) as client:
            while not stop.is_set():
                sent = time.monotonic()
                resp = client.post("/v1/chat/completions", json=BODY)
                out = Outcome(index, tenant, resp.status_code, sent, time.monotonic())
                out.headers = {k: v for k, v in resp.headers.items()
                               if k.startswith("x-ratelimit") or k == "retry-after"}  # fmt: skip
                doc = resp.json()
                if resp.status_code == 200:
                    out.tokens = int(doc["usage"]["total_tokens"])
                else:
                    out.error = doc.get("error")
                with lock:
                    results.append(out)
                if resp.status_code == 429:
                    stop.wait(PACE_SECONDS)

    threads = [
        threading.Thread(target=worker, args=(i, "limited"), daemon=True)
        for i in range(2)
        for _ in range(limited_threads)
    ]
    threads += [threading.Thread(target=worker, args=(i, "other"), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        if mid_run is not None:
            wait_until(lambda: time.monotonic() - started >= seconds / 2, timeout=seconds)
            mid_run()
        wait_until(lambda: time.monotonic() - started >= seconds, timeout=seconds + 5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return results


def _admitted_vs_bound(outcomes: list[Outcome], capacity: float, rate: float) -> tuple[int, float]:
    """Tokens admitted, and what a bucket of `capacity` refilled at `rate` allows over the
    run (first request sent to last admitted answer)."""
    ok = [o for o in outcomes if o.status == 200]
    first = min(o.sent for o in outcomes)
    last = max(o.done for o in ok)
    return sum(o.tokens for o in ok), capacity + rate * (last - first)


def _check_429(o: Outcome) -> None:
    assert o.error is not None
    assert o.error["code"] == "rate_limit_exceeded" and o.error["type"] == "tokens"
    assert set(o.error) == {"message", "type", "param", "code"}
    retry = int(o.headers["retry-after"])
    assert 1 <= retry <= math.ceil(60 * (BODY["max_tokens"] + 60) / TPM)  # one request's wait
    for name in ("limit", "remaining", "reset"):
        assert f"x-ratelimit-{name}-tokens" in o.headers


def _openai(router: Router, tenant: str, retries: int) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=router.url + "/v1", api_key=KEYS[tenant], max_retries=retries, timeout=30
    )


def _chat(client: openai.OpenAI, max_tokens: int) -> Any:
    return client.chat.completions.create(
        model=BODY["model"],
        messages=BODY["messages"],
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True},
    )


def test_quotas_shared_then_per_replica_while_redis_is_down_then_shared_again(
    fleet: Fleet,
) -> None:
    figures: dict[str, Any] = {}

    # 1. Shared through Redis: the limited tenant is pushed through both routers.
    outcomes = _load(fleet, RUN_SECONDS)
    limited = [o for o in outcomes if o.tenant == "limited"]
    other = [o for o in outcomes if o.tenant == "other"]
    assert {o.status for o in limited} == {200, 429}
    assert {o.status for o in other} == {200}, "the other tenant must be unaffected"
    assert {o.router for o in limited if o.status == 200} == {0, 1}
    for o in limited:
        assert o.headers["x-ratelimit-limit-tokens"] == str(TPM)  # the shared limit
        if o.status == 429:
            _check_429(o)
    admitted, bound = _admitted_vs_bound(limited, TPM, RATE)
    figures["shared"] = (admitted, round(bound))
    assert abs(admitted - bound) <= 0.05 * bound, figures

    # Retry-After is right: the bucket is nearly empty now (a request of 300 tokens does
    # not fit for 3 s: the 40-token ones could, after the time the load took to stop); the
    # wait the 429 states is what its figures give (tokens missing / rate, rounded up), and
    # the openai client, told to retry, waits it and is admitted.
    big = 300
    with (
        _openai(fleet.routers[0], "limited", retries=0) as client,
        pytest.raises(openai.RateLimitError) as refused,
    ):
        _chat(client, big)
    assert refused.value.code == "rate_limit_exceeded"
    retry_after = int(refused.value.response.headers["retry-after"])
    message = refused.value.body["message"]  # type: ignore[index]
    used, requested = (int(x) for x in re.findall(r"used (\d+), requested (\d+)", message)[0])
    missing = requested - (TPM - used)
    assert retry_after in {max(1, math.ceil((missing + d) / RATE)) for d in (-1, 0, 1)}, message
    with _openai(fleet.routers[1], "limited", retries=2) as client:
        answer = _chat(client, big)
    assert answer.usage is not None and answer.usage.completion_tokens == big
    figures["retry_after"] = retry_after

    # 2. Redis killed mid-run: per-replica limits, no 5xx, /readyz and the gauge say so.
    for r in fleet.routers:
        assert r.details()["quota_backend"] == "redis" and r.redis_up() == 1.0
    outcomes = _load(fleet, RUN_SECONDS * 2, mid_run=fleet.redis.kill)
    assert all(o.status in (200, 429) for o in outcomes), {o.status for o in outcomes}
    assert {o.status for o in outcomes if o.tenant == "other"} == {200}
    for r in fleet.routers:
        doc = r.details()
        assert doc["quota_backend"] == "local (redis unreachable)", doc
        assert doc["status"] == "degraded"
        assert any("redis unreachable" in p for p in doc["problems"])
        assert r.redis_up() == 0.0
    figures["per_replica"] = []
    for i in range(2):
        local = [o for o in outcomes if o.tenant == "limited" and o.router == i
                 and o.headers.get("x-ratelimit-limit-tokens") == str(TPM // 2)]  # fmt: skip
        assert any(o.status == 200 for o in local), f"router {i}: nothing admitted locally"
        assert any(o.status == 429 for o in local), f"router {i}: its share never ran out"
        for o in local:
            if o.status == 429:
                assert "this router's share" in (o.error or {}).get("message", "")
        admitted, bound = _admitted_vs_bound(local, TPM / 2, RATE / 2)
        figures["per_replica"].append((admitted, round(bound)))
        assert admitted <= 1.05 * bound, figures

    # 3. Redis back on its port: both routers share the limit again.
    fleet.redis.start()
    for r in fleet.routers:

        def shared(r: Router = r) -> bool:
            return bool(r.details()["quota_backend"] == "redis")

        wait_until(shared, timeout=15, what="quota_backend back to redis")
        assert r.redis_up() == 1.0
    outcomes = _load(fleet, RUN_SECONDS)
    limited = [o for o in outcomes if o.tenant == "limited"]
    assert {o.headers["x-ratelimit-limit-tokens"] for o in limited} == {str(TPM)}
    assert {o.status for o in outcomes if o.tenant == "other"} == {200}
    admitted, bound = _admitted_vs_bound(limited, TPM, RATE)
    figures["shared_again"] = (admitted, round(bound))
    assert abs(admitted - bound) <= 0.05 * bound, figures

    # 4. The limits follow the tenants file, without a restart.
    doc = json.loads(json.dumps(TENANTS))
    doc["tenants"][0]["tokens_per_minute"] = TPM * 10
    tmp = fleet.home / "tenants.yaml.tmp"
    tmp.write_text(json.dumps(doc))
    tmp.replace(fleet.home / "tenants.yaml")
    for r in fleet.routers:

        def limit_seen(r: Router = r) -> bool:
            headers = {"authorization": f"Bearer {KEYS['limited']}"}
            resp = httpx.post(
                r.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=30
            )
            return bool(resp.headers.get("x-ratelimit-limit-tokens") == str(TPM * 10))

        wait_until(limit_seen, timeout=20, interval=0.2, what="the reloaded limit")
    print("quota figures (admitted tokens, bound):", figures)


async def test_concurrent_requests_are_shared_leased_and_split_without_redis(
    redis: Redis,
) -> None:
    """`max_concurrent_requests` with Redis: counted across the replicas (two services
    here, as two routers); a place is freed when its request settles, or when its router
    stops renewing it (died) within a lease; Redis down: each replica its share."""
    if not redis.answers():
        redis.start()
    config = QuotaConfig(redis_url=redis.url, replicas=2, lease_seconds=1.5, retry_interval=0.2)
    a, b = QuotaService(config), QuotaService(config)
    tenant = Tenant("streams", frozenset({"EU"}), max_concurrent_requests=3)
    renewing = asyncio.create_task(b.run())  # `a` renews nothing: it stands for a dead router

    async def admit(service: QuotaService) -> Ticket:
        ticket = await service.admit(tenant, {}, 10, path=CHAT_PATH)
        assert ticket is not None
        return ticket

    async def refused(service: QuotaService) -> QuotaExceeded:
        with pytest.raises(QuotaExceeded) as err:
            await service.admit(tenant, {}, 10, path=CHAT_PATH)
        return err.value

    try:
        first, _, theirs = await admit(a), await admit(a), await admit(b)
        assert first.shared and first.lease is not None
        err = await refused(b)
        assert err.kind == "requests" and "3 requests in flight" in err.message
        assert err.retry_after == 1 and err.body()["error"]["code"] == "rate_limit_exceeded"
        a.settle(first, 0)  # its request ended: its place is free

        async def admitted(service: QuotaService) -> Ticket | None:
            try:
                return await admit(service)
            except QuotaExceeded:
                return None

        again = await async_wait_until(lambda: admitted(b), timeout=5, what="a freed place")
        # `a` stops renewing its one remaining request: it expires within a lease, while
        # b's two, renewed, stay.
        started = time.monotonic()
        third = await async_wait_until(lambda: admitted(b), timeout=10, what="an expired lease")
        assert time.monotonic() - started >= 0.5
        await refused(b)  # b's three places, renewed past their first lease
        for ticket in (theirs, again, third):
            b.settle(ticket, 0)
        # Redis down: each replica keeps its share, ceil(3 / 2) = 2.
        redis.kill()
        local = [await admit(a), await admit(a)]
        assert not local[0].shared and a.backend == "local (redis unreachable)"
        assert "this router's share" in (await refused(a)).message
        a.settle(local[0], 0)
        await admit(a)
    finally:
        renewing.cancel()
        await a.close()
        await b.close()
        if not redis.answers():
            redis.start()


def test_the_reservation_is_what_the_engine_may_generate(fleet: Fleet) -> None:
    """The review's evasions, through a real router and the simulator: counts the engine
    reads leniently (`"5000"`, `5000.0`) reserve what they say; a body without max_tokens
    is sent with the router's default (the engine cannot run to the end of its context);
    /v1/completions reserves its max_tokens, not max_completion_tokens (`n` and `best_of`,
    which the simulator refuses beyond 1, are unit-tested); counts the engine would
    refuse, or beyond any context, are 400s."""
    router = fleet.routers[0]
    headers = {"authorization": f"Bearer {KEYS['other']}"}
    capacity = 10_000_000  # the other tenant's tokens per minute (refills 166,666 a second)

    def post(path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(router.url + path, json=body, headers=headers, timeout=60)

    def reserved(resp: httpx.Response) -> int:
        # Against the limit in force: the shared one, or this router's share after a
        # timeout on a loaded machine (a request that meets one is decided locally).
        assert resp.status_code == 200, resp.text
        limit = int(resp.headers["x-ratelimit-limit-tokens"])
        assert limit in (capacity, capacity // 2)
        return limit - int(resp.headers["x-ratelimit-remaining-tokens"])

    chat = {"model": "llama", "messages": [{"role": "user", "content": "hi"}]}
    for value in ("5000", 5000.0):
        resp = post("/v1/chat/completions", {**chat, "max_tokens": value})
        assert 5000 <= reserved(resp) < 5000 + 100, value  # the prompt: ~20 tokens
    resp = post(
        "/v1/completions",
        {"model": "llama", "prompt": "hi", "max_completion_tokens": 1, "max_tokens": 2000},
    )
    assert 2000 <= reserved(resp) < 2100
    # No max_tokens, EOS ignored: the engine would generate up to the rest of its context
    # (131,072 tokens); the router sent its default, 1024, and reserved that.
    resp = post("/v1/chat/completions", {**chat, "ignore_eos": True})
    assert 1024 <= reserved(resp) < 1024 + 100
    assert resp.json()["usage"]["completion_tokens"] == 1024
    for bad in (5000.5, "5e3", 0, 10**40, 10**320):
        resp = post("/v1/chat/completions", {**chat, "max_tokens": bad})
        assert resp.status_code == 400, (bad, resp.text)
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "max_tokens"
        assert "retry-after" not in resp.headers


def _cli(server: Redis) -> redis_py.Redis:
    return redis_py.Redis(port=server.port, socket_timeout=5)


class SlowProxy:
    """A TCP proxy in front of the real Redis that holds each reply `delay` seconds: the
    script runs, its answer arrives after the router's timeout."""

    def __init__(self, port: int) -> None:
        self.port, self.delay = port, 0.0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, *, slow: bool) -> None:
        try:
            while data := await r.read(65536):
                if slow and self.delay:
                    await asyncio.sleep(self.delay)
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)
        for task in (
            asyncio.create_task(self._pipe(reader, up_w, slow=False)),
            asyncio.create_task(self._pipe(up_r, writer, slow=True)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


async def test_a_reply_lost_to_the_timeout_is_undone_once_redis_answers(redis: Redis) -> None:
    """The script runs but answers after the 0.25 s timeout: the request is decided
    locally, and its reservation and lease in Redis, untracked, once locked a tenant with
    max_concurrent_requests 4 out for 28.7 s with nothing in flight. Now each is undone (by
    its id) at the first good probe: the tenant's places and tokens are all back."""
    if not redis.answers():
        redis.start()
    cli = _cli(redis)
    cli.flushall()
    proxy = SlowProxy(redis.port)
    await proxy.start()
    config = QuotaConfig(redis_url=proxy.url, redis_timeout=0.25, retry_interval=0.2)
    service = QuotaService(config)
    tenant = Tenant("c", frozenset({"EU"}), max_concurrent_requests=4, tokens_per_minute=100_000)
    runner = asyncio.create_task(service.run())
    prefix = config.key_prefix
    try:
        warm = Tenant("warm", frozenset({"EU"}), tokens_per_minute=100_000)  # 4 connections
        for ticket in await asyncio.gather(
            *[service.admit(warm, {"max_tokens": 1}, 4, path=CHAT_PATH) for _ in range(4)]
        ):
            assert ticket is not None and ticket.shared  # not settled: no call in flight
        proxy.delay = 0.6
        tickets = await asyncio.gather(
            *[service.admit(tenant, {"max_tokens": 100}, 40, path=CHAT_PATH) for _ in range(4)]
        )
        assert all(t is not None and not t.shared for t in tickets)
        for ticket in tickets:
            assert ticket is not None
            service.settle(ticket, 50)
        # The scripts did run: four leases and 440 tokens taken, nobody tracking them.
        await async_wait_until(
            lambda: cli.zcard(lease_key(prefix, "c")) == 4, timeout=5, what="late takes"
        )
        proxy.delay = 0.0
        await async_wait_until(lambda: service.backend == "redis", timeout=10, what="back")
        assert cli.zcard(lease_key(prefix, "c")) == 0
        level = float(cli.hget(bucket_key(prefix, "c", buckets_of(_limits(tenant))[0]), "l"))
        assert level > 100_000 - 50, level  # refunded (and refilled meanwhile)
        assert service.undone.labels("undone")._value.get() == 4
        started = time.monotonic()
        again = [await service.admit(tenant, {"max_tokens": 10}, 40, path=CHAT_PATH)
                 for _ in range(4)]  # fmt: skip
        assert all(t is not None and t.shared for t in again)
        assert time.monotonic() - started < 1.0
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await service.close()
        await proxy.close()


async def test_client_pause_is_no_5xx_no_hang_and_no_flapping(redis: Redis) -> None:
    """`CLIENT PAUSE 3000 WRITE` (what a Sentinel failover does): PING answers, scripts
    wait. Requests during the pause are decided locally within one timeout; the circuit
    trips once and stays open until the pause is over and the script answers again (it
    flapped 12 times in 15 s, with 500s from a pool disconnected under requests)."""
    if not redis.answers():
        redis.start()
    cli = _cli(redis)
    cli.flushall()
    config = QuotaConfig(redis_url=redis.url, redis_timeout=0.25, retry_interval=0.2)
    service = QuotaService(config)
    tenant = Tenant(
        "p", frozenset({"EU"}), tokens_per_minute=6_000_000, max_concurrent_requests=500
    )
    switches: list[str] = []
    runner = asyncio.create_task(service.run())

    async def watch() -> None:
        last = service.backend
        while True:
            await asyncio.sleep(0.01)
            if service.backend != last:
                last = service.backend
                switches.append(last)

    watcher = asyncio.create_task(watch())
    latencies: list[float] = []

    async def one() -> Ticket | None:
        started = time.monotonic()
        try:
            return await service.admit(tenant, {"max_tokens": 20}, 40, path=CHAT_PATH)
        finally:
            latencies.append(time.monotonic() - started)

    try:
        first = await one()
        assert first is not None and first.shared
        service.settle(first, 10)  # its lease released before the pause
        await async_wait_until(
            lambda: cli.zcard(lease_key(config.key_prefix, "p")) == 0, timeout=5, what="settled"
        )
        cli.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
        paused = time.monotonic()
        tickets: list[Ticket | None] = []
        while time.monotonic() - paused < 2.5:
            batch = await asyncio.gather(*[one() for _ in range(20)])
            for ticket in batch:
                assert ticket is not None  # never an exception (a 5xx)
                service.settle(ticket, 10)
            tickets += batch
        assert switches == ["local (redis unreachable)"], switches
        assert max(latencies) < 0.25 * 2 + 0.3, max(latencies)
        await async_wait_until(lambda: service.backend == "redis", timeout=10, what="back")
        assert switches == ["local (redis unreachable)", "redis"], switches
        assert service.last_error is None
        # The takes that waited out the pause ran after it; they were undone.
        await async_wait_until(
            lambda: cli.zcard(lease_key(config.key_prefix, "p")) == 0, timeout=10, what="undone"
        )
    finally:
        watcher.cancel()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        cli.execute_command("CLIENT", "UNPAUSE")
        await service.close()


@pytest.mark.parametrize("refusal", ["acl", "oom"])
async def test_a_redis_that_pings_but_refuses_scripts_keeps_the_local_share(
    redis: Redis, refusal: str
) -> None:
    """PING answers, every script is refused: an ACL without EVAL/EVALSHA (NOPERM), or
    memory over maxmemory (OOM: the admission's first write, the settle's too). The probe
    runs the script, so the replica keeps its own share: tokens admitted stay within its
    bucket's bound (the PING switched it back every second and refilled it: 54,810 in
    10 s against 7,001)."""
    if not redis.answers():
        redis.start()
    cli = _cli(redis)
    cli.flushall()
    config = QuotaConfig(redis_url=redis.url, redis_timeout=0.25, retry_interval=0.1)
    service = QuotaService(config)
    tenant = Tenant("refused", frozenset({"EU"}), tokens_per_minute=6000)  # 100 a second
    runner = asyncio.create_task(service.run())

    def restore() -> None:
        cli.acl_setuser("default", enabled=True, commands=["+@all"])
        cli.config_set("maxmemory", "0")

    if refusal == "acl":
        cli.acl_setuser("default", enabled=True, commands=["-eval", "-evalsha"])
    else:
        cli.config_set("maxmemory", "1")
    try:
        admitted, started = 0, time.monotonic()
        while (elapsed := time.monotonic() - started) < 3.0:
            try:
                ticket = await service.admit(tenant, {"max_tokens": 90}, 40, path=CHAT_PATH)
                assert ticket is not None
                service.settle(ticket, 100)
                admitted += 100
            except QuotaExceeded:
                await asyncio.sleep(0.02)
        assert service.backend == "local (redis unreachable)"
        error = service.last_error or ""
        assert ("NoPermission" if refusal == "acl" else "OutOfMemory") in error, error
        assert admitted <= 6000 + 100 * elapsed, admitted
        restore()
        await async_wait_until(lambda: service.backend == "redis", timeout=10, what="back")
    finally:
        restore()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await service.close()
