"""Pick the router's server stack by measurement: minimal pass-through proxies compared.

Each variant is the smallest proxy that forwards a POST body to one upstream and relays the
response back (buffered for JSON, chunk by chunk for SSE). The same load generator runs
against the upstream directly (the baseline) and through each variant, in the same run, so
the results are ratios on this machine rather than absolute numbers.

    PYTHONPATH=router python bench/router_overhead/stack_compare.py --requests 2000
    PYTHONPATH=router python bench/router_overhead/stack_compare.py --rate 100 \
        --requests 2400 --variants protocol+router-client uvicorn-asgi+router-client \
        aiohttp+router-client

`router-client` is the router's upstream client as the router uses it
(`factory_router.upstream.client.UpstreamClient`: aiohttp's client behind the reuse guard
and the router's connection slots; `open()` up to the first body bytes, then `read()`).

Closed loop (`--concurrency`, the default) shows CPU per request and throughput when the
proxy is busy; a fixed arrival rate (`--rate`, open loop) shows the added latency at a
moderate load, where a proxy's code runs on cold caches between requests. Writes
stack_compare.json/.md (closed loop) or results/stack_compare-rate<N>.json/.md next to
this file, or `--out PATH`.json/.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import uvicorn
from aiohttp import ClientSession, TCPConnector, web
from common import cpu_seconds, free_port, load_rate, wait_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

HERE = Path(__file__).resolve().parent
BODY = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hello " * 40}], "max_tokens": 16}
).encode()
REPLY = json.dumps(
    {"id": "x", "object": "chat.completion", "choices": [{"message": {"content": "w " * 60}}]}
).encode()
VARIANTS = [
    "protocol+router-client",
    "uvicorn-asgi+router-client",
    "aiohttp+router-client",
    "aiohttp+aiohttp",
    "aiohttp+httpx",
    "aiohttp+httpx-aiohttp",
    "uvicorn+httpx",
    "uvicorn+httpx-aiohttp",
    "aiohttp+aiosonic",
    "aiohttp+blacksheep",
]
# Clients measured only where installed (not dependencies of the router):
#   pip install aiosonic blacksheep   (into the venv that runs this script)
OPTIONAL_CLIENTS = {"httpx-aiohttp": "httpx_aiohttp", "aiosonic": "aiosonic",
                    "blacksheep": "blacksheep"}  # fmt: skip


def serve_upstream(port: int) -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if b'"stream": true' in body:
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(16):
                await resp.write(b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.Response(body=REPLY, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_proxy(variant: str, port: int, upstream: str, loop: str = "asyncio") -> None:
    server, _, client = variant.partition("+")
    if loop == "uvloop":
        import uvloop  # noqa: PLC0415 (only for this variant)

        uvloop.install()
    target = upstream + "/v1/chat/completions"
    if server == "aiohttp" and client in ("router-client", "aiosonic", "blacksheep"):
        serve_aiohttp_other_client(client, port, upstream)
        return
    if server in ("protocol", "uvicorn-asgi"):
        serve_without_framework(server, port, upstream)
        return
    if server == "aiohttp":

        async def on_start(app: web.Application) -> None:
            if client == "aiohttp":
                app["c"] = ClientSession(connector=TCPConnector(limit=256))
            else:
                app["c"] = make_httpx(client)

        async def handler(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            headers = {"content-type": "application/json"}
            if client == "aiohttp":
                async with request.app["c"].post(target, data=body, headers=headers) as up:
                    out = web.StreamResponse(
                        status=up.status, headers={"content-type": up.content_type}
                    )
                    await out.prepare(request)
                    async for chunk in up.content.iter_any():
                        await out.write(chunk)
                    await out.write_eof()
                    return out
            req = request.app["c"].build_request("POST", target, content=body, headers=headers)
            up = await request.app["c"].send(req, stream=True)
            try:
                out = web.StreamResponse(
                    status=up.status_code, headers={"content-type": up.headers["content-type"]}
                )
                await out.prepare(request)
                async for chunk in up.aiter_raw():
                    await out.write(chunk)
                await out.write_eof()
                return out
            finally:
                await up.aclose()

        app = web.Application()
        app.on_startup.append(on_start)
        app.router.add_post("/v1/chat/completions", handler)
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
        return
    state: dict[str, Any] = {}

    async def shandler(request: Request) -> StreamingResponse:
        if "c" not in state:
            state["c"] = make_httpx(client)
        body = await request.body()
        c = state["c"]
        req = c.build_request(
            "POST", target, content=body, headers={"content-type": "application/json"}
        )
        up = await c.send(req, stream=True)
        return StreamingResponse(
            up.aiter_raw(),
            status_code=up.status_code,
            media_type=up.headers["content-type"],
            background=None,
        )

    app = Starlette(routes=[Route("/v1/chat/completions", shandler, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_aiohttp_other_client(client: str, port: int, upstream: str) -> None:
    """aiohttp's server with the router's upstream client (`router-client`), or with
    aiosonic or BlackSheep's client, relaying JSON whole and SSE chunk by chunk."""
    target = upstream + "/v1/chat/completions"

    async def on_start(app: web.Application) -> None:
        if client == "router-client":
            app["c"] = RouterClient(upstream)
        elif client == "aiosonic":
            import aiosonic  # noqa: PLC0415

            app["c"] = aiosonic.HTTPClient()
        else:
            from blacksheep.client import ClientSession as BlackSheep  # noqa: PLC0415

            app["c"] = BlackSheep(follow_redirects=False)

    async def relay(
        request: web.Request, status: int, ctype: str, chunks: Any
    ) -> web.StreamResponse:
        if not ctype.startswith("text/event-stream"):
            body = b"".join([c async for c in chunks])
            return web.Response(status=status, body=body, headers={"content-type": ctype})
        out = web.StreamResponse(status=status, headers={"content-type": ctype})
        await out.prepare(request)
        async for chunk in chunks:
            await out.write(chunk)
        await out.write_eof()
        return out

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        c = request.app["c"]
        if client == "router-client":
            up = await c.post(request.path, body)
            try:
                ctype = up.response.headers["content-type"]
                return await relay(request, up.status, ctype, _chunks(up))
            finally:
                up.close()
        if client == "aiosonic":
            r = await c.post(target, data=body, headers={"content-type": "application/json"})
            ctype = r.headers["content-type"]
            if not ctype.startswith("text/event-stream"):  # read_chunks() is for chunked
                data = await r.content()
                return web.Response(
                    status=r.status_code, body=data, headers={"content-type": ctype}
                )
            return await relay(request, r.status_code, ctype, r.read_chunks())
        from blacksheep import Content  # noqa: PLC0415

        r = await c.post(target, content=Content(b"application/json", body))
        ctype = r.content_type().decode()
        return await relay(request, r.status, ctype, r.content.stream())

    app = web.Application()
    app.on_startup.append(on_start)
    app.router.add_post("/v1/chat/completions", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_without_framework(server: str, port: int, upstream: str) -> None:
    """The router's upstream client behind no web framework: a bare ASGI app on uvicorn
    (httptools), or an asyncio protocol parsing requests with httptools itself (the
    router's server is such a protocol). Neither is a usable server (no limits, errors,
    or shutdown): they show what is left when the server side costs as little as Python
    allows."""
    import httptools  # noqa: PLC0415

    client = RouterClient(upstream)

    async def exchange(path: bytes, body: bytes) -> Any:
        return await client.post(path.decode(), body)

    if server == "uvicorn-asgi":

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            up = await exchange(scope["path"].encode(), body)
            ctype = up.response.headers["content-type"].encode()
            try:
                if ctype.startswith(b"text/event-stream"):
                    start = {"type": "http.response.start", "status": up.status}
                    await send({**start, "headers": [(b"content-type", ctype)]})
                    async for chunk in _chunks(up):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b""})
                    return
                data = b"".join([c async for c in _chunks(up)])
                headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(data))]
                await send({"type": "http.response.start", "status": up.status, "headers": headers})
                await send({"type": "http.response.body", "body": data})
            finally:
                up.close()

        uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", log_level="warning",
                    access_log=False, lifespan="off")  # fmt: skip
        return

    class Server(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""
            self.body: list[bytes] = []

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            body, self.body = b"".join(self.body), []
            asyncio.get_running_loop().create_task(self.answer(self.url, body))

        async def answer(self, url: bytes, body: bytes) -> None:
            up = await exchange(url, body)
            ctype = up.response.headers["content-type"].encode()
            write = self.transport.write
            try:
                if ctype.startswith(b"text/event-stream"):
                    write(b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\n"
                          b"transfer-encoding: chunked\r\n\r\n" % (up.status, ctype))  # fmt: skip
                    async for chunk in _chunks(up):
                        write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    write(b"0\r\n\r\n")
                    return
                data = b"".join([c async for c in _chunks(up)])
                write(b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                      % (up.status, ctype, len(data), data))  # fmt: skip
            finally:
                up.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(Server, "127.0.0.1", port)
        await listener.serve_forever()

    asyncio.run(main())


class RouterClient:
    """The router's upstream client against one backend, as the router's proxy uses it:
    `UpstreamClient.open()` returns once the first body bytes are in (`Opened`), the rest
    comes from `Response.read()`. The router's default timeouts; 256 connections, as the
    other clients here get."""

    def __init__(self, upstream: str) -> None:
        from factory_router.policy.config import Limits, Timeouts  # noqa: PLC0415
        from factory_router.policy.fleet import Backend  # noqa: PLC0415
        from factory_router.upstream.client import UpstreamClient  # noqa: PLC0415

        self.backend = Backend(id="bench/upstream", model="m", pool="bench", region=None,
                               url=upstream)  # fmt: skip
        limits = Limits(max_connections=256, max_connections_per_host=256, keepalive_expiry=30)
        self.client = UpstreamClient(Timeouts(), limits)
        self.started = False

    async def post(self, path: str, body: bytes) -> Any:
        """An `Opened` response; the caller reads it with `_chunks()` and closes it."""
        if not self.started:  # the client's session needs the running loop
            await self.client.start()
            self.started = True
        headers = {"content-type": "application/json"}
        return await self.client.open(self.backend, "POST", path, body, headers)


async def _chunks(up: Any) -> Any:
    """The body of an `Opened` response: its first bytes, then `read()` until b""."""
    chunk = up.first_chunk
    while chunk:
        yield chunk
        chunk = await up.response.read()


def versions() -> dict[str, str]:
    out = {}
    for dist in ("aiohttp", "httptools", "httpx", "uvicorn", "aiosonic", "blacksheep"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def make_httpx(client: str) -> Any:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    if client == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport  # noqa: PLC0415

        return httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=30)
    return httpx.AsyncClient(limits=limits, timeout=30)


async def load(url: str, n: int, conc: int, stream: bool) -> dict[str, float]:
    body = BODY.replace(b'"max_tokens"', b'"stream": true, "max_tokens"') if stream else BODY
    lat: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:
        queue = iter(range(n))

        async def worker() -> None:
            for _ in queue:
                t0 = time.perf_counter()
                async with s.post(
                    url, data=body, headers={"content-type": "application/json"}
                ) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(r.status)
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {
        "p50_ms": statistics.median(lat) * 1e3,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1e3,
        "rps": n / wall,
    }


async def run(args: argparse.Namespace) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    me = [sys.executable, str(HERE / "stack_compare.py")]
    up_port = free_port()
    quiet = {"stderr": subprocess.DEVNULL}  # killed proxies complain about open sessions
    procs.append(subprocess.Popen([*me, "upstream", str(up_port)], **quiet))  # noqa: ASYNC220
    results: dict[str, Any] = {}
    pids: dict[str, int] = {}
    try:
        await wait_port(up_port)
        upstream = f"http://127.0.0.1:{up_port}"
        targets = {"direct": upstream}
        for v in args.variants:
            module = OPTIONAL_CLIENTS.get(v.partition("+")[2])
            if module and importlib.util.find_spec(module) is None:
                print(f"{v}: skipped, {module} is not installed", flush=True)
                continue
            p = free_port()
            cmd = [*me, "proxy", v, str(p), upstream, args.loop]
            procs.append(subprocess.Popen(cmd, **quiet))  # noqa: ASYNC220
            targets[v] = f"http://127.0.0.1:{p}"
            pids[v] = procs[-1].pid
        for t in targets.values():
            await wait_port(int(t.rsplit(":", 1)[1]))
        # Rounds interleave the variants so that a change in background load hits all
        # of them alike; the medians over rounds are reported, with the proxy's CPU time
        # per request (less sensitive to other processes than latency is).
        per_round = max(1, args.requests // args.rounds)
        for stream in (False, True):
            mode = "stream" if stream else "json"
            samples: dict[str, list[dict[str, float]]] = {n: [] for n in targets}
            for base in targets.values():  # warm-up
                await load(base + "/v1/chat/completions", 200, args.concurrency, stream)
            for _ in range(args.rounds):
                for name, base in targets.items():
                    cpu0 = cpu_seconds(pids[name]) if name in pids else 0.0
                    url = base + "/v1/chat/completions"
                    if args.rate:
                        r = await load_rate(url, per_round, args.rate, stream, {})
                        r = {k: r[k] for k in ("p50_ms", "p99_ms", "rps")}
                    else:
                        r = await load(url, per_round, args.concurrency, stream)
                    if name in pids:
                        r["cpu_ms_per_req"] = (cpu_seconds(pids[name]) - cpu0) * 1e3 / per_round
                    samples[name].append(r)
            for name, runs in samples.items():
                med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
                results[f"{name}|{mode}"] = med
                print(name, mode, {k: round(v, 3) for k, v in med.items()}, flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    if args.out is not None:
        out = args.out
    elif args.rate:
        out = HERE / "results" / f"stack_compare-rate{args.rate:g}"
    else:
        out = HERE / "stack_compare"
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "rate": args.rate or None,
                "concurrency": None if args.rate else args.concurrency,
                "requests": args.requests,
                "rounds": args.rounds,
                "loop": args.loop,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": versions(),
                "results": results,
            },
            indent=2,
        )
    )
    lines = [
        "| variant | mode | p50 ms | p99 ms | req/s | added p50 ms | proxy CPU ms/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        name, mode = key.split("|")
        base = results[f"direct|{mode}"]["p50_ms"]
        lines.append(
            f"| {name} | {mode} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['rps']:.0f} | {r['p50_ms'] - base:.2f} | {r.get('cpu_ms_per_req', 0):.3f} |"
        )
    load_desc = f"{args.rate:g} req/s, open loop" if args.rate else f"{args.concurrency} concurrent"
    title = f"Stack comparison: {load_desc}, {args.rounds} rounds, medians, {args.loop}\n\n"
    out.with_suffix(".md").write_text(title + "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "upstream":
        serve_upstream(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        serve_proxy(sys.argv[2], int(sys.argv[3]), sys.argv[4], *sys.argv[5:6])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--variants", nargs="*", choices=VARIANTS, default=VARIANTS)
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=0, help="req/s, open loop (0: closed loop)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output path without suffix (default: stack_compare or "
        "results/stack_compare-rate<N> next to this file)",
    )
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
