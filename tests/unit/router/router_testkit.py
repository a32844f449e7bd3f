"""Test kit for the router: fake engines on 127.0.0.1, a router wired to them, wait_until.

Every server here binds 127.0.0.1 on a free port and is stopped by its context manager.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from multidict import CIMultiDict

from factory_router.app.logs import AccessLog
from factory_router.app.server import RouterServer, create_app
from factory_router.app.state import RouterState
from factory_router.policy.config import RouterConfig, Timeouts
from factory_router.policy.fleet import Backend, Region, RttMatrix, build_fleet
from factory_router.policy.policies import PolicyName
from factory_router.policy.tenants import hash_key, parse_tenants
from tests.support.waiting import async_wait_until

KEYS = {"eu": "sk-eu-0001", "us": "sk-us-0001", "global": "sk-global-0001", "uk": "sk-uk-1"}
ADMIN_KEY = "sk-admin-0001"
TENANTS_DOC: dict[str, Any] = {
    "admin_keys_sha256": [hash_key(ADMIN_KEY)],
    "tenants": [
        {"name": "eu-only", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key(KEYS["eu"])]},
        {"name": "us-only", "jurisdictions": ["US"], "api_keys_sha256": [hash_key(KEYS["us"])]},
        {"name": "uk-only", "jurisdictions": ["UK"], "api_keys_sha256": [hash_key(KEYS["uk"])]},
        {
            "name": "global",
            "jurisdictions": ["EU", "US", "UK"],
            "api_keys_sha256": [hash_key(KEYS["global"])],
        },
    ],
}
REGIONS = [
    Region("eu-west-1", "EU"),
    Region("eu-central-1", "EU"),
    Region("us-east-1", "US"),
    Region("uk-south-1", "UK"),
]


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = ""
) -> None:
    """The project's one way to wait (`tests.support.waiting`), for sync or async
    predicates, polling every 10 ms."""

    async def check() -> bool:
        result = predicate()
        return result if isinstance(result, bool) else await result

    await async_wait_until(check, timeout, interval=0.01, what=what or str(predicate))


def auth(who: str) -> dict[str, str]:
    key = ADMIN_KEY if who == "admin" else KEYS[who]
    return {"authorization": f"Bearer {key}"}


def admin(server: RouterServer) -> httpx.AsyncClient:
    """A client of the router's admin listener: /metrics, /readyz details, /admin/*."""
    return httpx.AsyncClient(base_url=server.admin_url)


async def scrape(server: RouterServer) -> str:
    """The router's /metrics text (admin listener)."""
    async with admin(server) as c:
        reply = await c.get("/metrics")
    reply.raise_for_status()
    return reply.text


async def readiness(server: RouterServer) -> dict[str, Any]:
    """The router's /readyz details (admin listener)."""
    async with admin(server) as c:
        doc: dict[str, Any] = (await c.get("/readyz")).json()
    return doc


async def explain(server: RouterServer, tenant: str, model: str) -> list[dict[str, Any]]:
    """`GET /admin/explain` as the admin, on the admin listener: every candidate row."""
    async with admin(server) as c:
        reply = await c.get(
            "/admin/explain", params={"tenant": tenant, "model": model}, headers=auth("admin")
        )
    reply.raise_for_status()
    return list(reply.json()["candidates"])


@dataclass
class FakeEngine:
    """A tiny OpenAI-compatible upstream that counts what it receives.

    mode: ok | fail (503) | stall (no first byte, ever) | redirect (307 to `redirect_to`)
          | stall_after_headers (200 + SSE headers, then nothing)
          | slow_stream (chunks every `chunk_delay` s, forever until the client goes)

    `GET /health` (the router's RTT probes, which carry no request data) is counted apart,
    in `probes`; `counts` and `total` are what carried a client's request. `network_delay`
    (seconds) is added before every answer, probes included: a distant region.
    """

    model: str = "m"
    mode: str = "ok"
    chunks: int = 5
    chunk_delay: float = 0.0
    redirect_to: str = ""
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    headers_seen: list[CIMultiDict[str]] = field(default_factory=list)
    bodies_seen: list[dict[str, Any]] = field(default_factory=list)
    active: int = 0
    disconnected_at: float | None = None
    probes: int = 0
    network_delay: float = 0.0
    set_cookie: str = ""  # sent as Set-Cookie with non-streamed answers
    url: str = ""
    _runner: web.AppRunner | None = None
    _listener: asyncio.Server | None = None
    _transports: set[asyncio.Transport] = field(default_factory=set)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def _health(self, _: web.Request) -> web.Response:
        self.probes += 1
        await asyncio.sleep(self.network_delay)
        return web.Response(status=503 if self.mode == "fail" else 200)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counts[request.path] += 1
        await asyncio.sleep(self.network_delay)
        self.headers_seen.append(CIMultiDict(request.headers))
        body = await request.read()
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {"_raw": True}
        self.bodies_seen.append(doc)
        if self.mode == "fail":
            return web.json_response({"error": "engine down"}, status=503)
        if self.mode == "other_model":
            # What a stale endpoint gives: its address now holds another model's engine.
            return web.json_response({"error": {"message": "The model does not exist."}},
                                     status=404)  # fmt: skip
        if self.mode == "redirect":
            raise web.HTTPTemporaryRedirect(self.redirect_to + request.path)
        if self.mode == "stall":
            self.active += 1
            try:
                await asyncio.sleep(3600)
            finally:
                self.active -= 1
        if request.path == "/v1/embeddings":
            return web.json_response(
                {
                    "object": "list",
                    "model": self.model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                }
            )
        if self.mode == "stall_after_headers":
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            self.active += 1
            try:
                await asyncio.sleep(3600)
            finally:
                self.active -= 1
        if doc.get("stream") or self.mode == "slow_stream":
            return await self._stream(request, request.path == "/v1/chat/completions")
        answer = web.json_response(_completion(self.model, request.path))
        if self.set_cookie:
            answer.headers["Set-Cookie"] = self.set_cookie
        return answer

    async def _stream(self, request: web.Request, chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        self.active += 1
        try:
            i = 0
            while self.mode == "slow_stream" or i < self.chunks:
                await resp.write(
                    b"data: " + json.dumps(_chunk(self.model, i, chat)).encode() + b"\n\n"
                )
                i += 1
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected_at = time.monotonic()
            raise
        finally:
            self.active -= 1
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(lambda: _Guarded(self, server()), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._listener.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        """The engine goes away: in-flight requests are cut, nothing is left open.

        Its own listener rather than a web.TCPSite, stopped in this order:
        1. stop accepting, but keep the server object open: on Python 3.11 a connection
           accepted just before `Server.close()` fails to build its transport afterwards
           (`Server._attach` asserts) and its socket is leaked, a ResourceWarning that
           fails the test that killed the engine under load;
        2. aiohttp's shutdown; then every connection still open is aborted, and one whose
           transport starts later is aborted as it starts (`_Guarded`);
        3. close the server, with nothing left to accept."""
        listener, self._listener = self._listener, None  # from now on, _Guarded refuses
        if listener is not None:
            loop = asyncio.get_running_loop()
            for sock in listener.sockets:
                loop.remove_reader(sock.fileno())
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for transport in list(self._transports):
            transport.abort()
        if listener is not None:
            listener.close()


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, which a stopped engine refuses to start."""

    def __init__(self, engine: FakeEngine, inner: asyncio.Protocol) -> None:
        self._engine = engine
        self._inner = inner
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._engine._listener is None:  # stopping
            transport.abort()
            return
        self._transport = transport
        self._engine._transports.add(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._engine._transports.discard(self._transport)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _completion(model: str, path: str) -> dict[str, Any]:
    if path == "/v1/completions":
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "text": "hello", "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hello"},
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunk(model: str, i: int, chat: bool) -> dict[str, Any]:
    if chat:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}],
        }
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "text": f"t{i} ", "finish_reason": None, "logprobs": None}],
    }


@asynccontextmanager
async def engines(n: int, **kw: Any) -> AsyncIterator[list[FakeEngine]]:
    started = [FakeEngine(**kw) for _ in range(n)]
    try:
        for e in started:
            await e.start()
        yield started
    finally:
        for e in started:
            await e.stop()


def backend(engine: FakeEngine, pool: str, region: str | None, model: str = "m") -> Backend:
    return Backend(id=f"{pool}/{engine.url}", model=model, pool=pool, region=region, url=engine.url)


@asynccontextmanager
async def router(
    backends: list[Backend],
    *,
    regions: list[Region] | None = None,
    region: str = "eu-west-1",
    policy: PolicyName = PolicyName.SCORE,
    timeouts: Timeouts | None = None,
    config: RouterConfig | None = None,
    prometheus_url: str | None = None,
    tenants_doc: dict[str, Any] | None = None,
    access_log: AccessLog | None = None,
    rtt: dict[str, dict[str, float]] | None = None,
    **app_kw: Any,
) -> AsyncIterator[RouterServer]:
    cfg = config or RouterConfig(timeouts=timeouts or Timeouts(first_byte=5.0, grace_period=2.0))
    state = RouterState.create(
        region=region,
        tenants=parse_tenants(tenants_doc or TENANTS_DOC),
        fleet=build_fleet(
            regions if regions is not None else REGIONS,
            backends,
            RttMatrix.from_nested(rtt or {"eu-west-1": {"us-east-1": 80}}),
        ),
        config=cfg,
        policy=policy,
        prometheus_url=prometheus_url,
        access_log=access_log or AccessLog(io.BytesIO()),
    )
    async with RouterServer(create_app(state, **app_kw)) as server:
        yield server


def tls_server_context(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context with a throw-away certificate for 127.0.0.1, and the
    certificate's path (for a client that trusts it)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert
