"""The router's upstream client (aiohttp's, with `reuse_guard`) against real sockets:
scripted servers on 127.0.0.1 that answer each request the way a test needs (keep-alive,
chunked, close-delimited, idle close, malformed, slow), and a TLS server with a throw-away
certificate. Misbehaving upstreams and tenant isolation: test_upstream_isolation.py."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from factory_router.policy.config import Limits, Timeouts
from factory_router.policy.fleet import Backend
from factory_router.upstream.client import AttemptFailed, UpstreamClient
from tests.unit.router.router_testkit import tls_server_context, wait_until


class AndClose(bytes):
    """An answer after which the server closes the connection."""


# (connection number, request number on that connection, the request) -> bytes to send;
# None closes the connection without answering.
Script = Callable[[int, int, bytes], Awaitable[bytes | None]]


def reply(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class ScriptedServer:
    script: Script
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    open_now: int = 0
    url: str = ""
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        number, seen = self.connections, 0
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                seen += 1
                answer = await self.script(number, seen, request)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if isinstance(answer, AndClose):
                    return
        finally:
            self.writers.discard(writer)
            self.open_now -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def scripted(
    script: Script, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[ScriptedServer]:
    srv = ScriptedServer(script)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    srv.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        yield srv
    finally:
        for writer in list(srv.writers):
            writer.close()  # handlers waiting for a request end cleanly
        server.close()
        await server.wait_closed()


def backend(url: str) -> Backend:
    return Backend(id="p/x", model="m", pool="p", region="eu-west-1", url=url)


@contextlib.asynccontextmanager
async def client(**limits: float) -> AsyncIterator[UpstreamClient]:
    timeouts = Timeouts(
        first_byte=float(limits.pop("first_byte", 5.0)),
        pool_acquire=float(limits.pop("pool_acquire", 5.0)),
        idle=float(limits.pop("idle", 2.0)),
    )
    c = UpstreamClient(timeouts, Limits(**limits))  # type: ignore[arg-type]
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def fetch(c: UpstreamClient, url: str, body: bytes = b"{}") -> tuple[int, bytes]:
    opened = await c.open(backend(url), "POST", "/v1/chat/completions", body, {})
    parts = [opened.first_chunk]
    try:
        while chunk := await opened.response.read():
            parts.append(chunk)
    finally:
        opened.close()
    return opened.status, b"".join(parts)


async def test_keep_alive_connections_are_reused() -> None:
    async def ok(conn: int, n: int, req: bytes) -> bytes:
        return reply(b'{"n": %d}' % n)

    async with scripted(ok) as srv, client() as c:
        for i in range(1, 4):
            assert await fetch(c, srv.url) == (200, b'{"n": %d}' % i)
        assert srv.connections == 1 and c.connections == 1


async def test_request_carries_path_prefix_host_headers_and_body() -> None:
    async def ok(conn: int, n: int, req: bytes) -> bytes:
        return reply(b"{}")

    async with scripted(ok) as srv, client() as c:
        opened = await c.open(
            backend(srv.url + "/eu"), "POST", "/v1/completions", b'{"a":1}', {"x-request-id": "r1"}
        )
        opened.close()
    head, _, body = srv.requests[0].partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")  # header names are case-insensitive
    assert lines[0] == b"post /eu/v1/completions http/1.1"
    port = srv.url.rsplit(":", 1)[1]
    assert f"host: 127.0.0.1:{port}".encode() in lines
    assert b"x-request-id: r1" in lines and b"content-length: 7" in lines
    assert body == b'{"a":1}'


async def test_header_values_with_line_breaks_are_never_written() -> None:
    async def ok(conn: int, n: int, req: bytes) -> bytes:
        return reply(b"{}")

    async with scripted(ok) as srv, client() as c:
        headers = {"a": "ok", "b": "x\r\nevil: 1", "c": "y\nevil: 2"}
        opened = await c.open(backend(srv.url), "POST", "/v1/x", b"", headers)
        opened.close()
    head = srv.requests[0].split(b"\r\n\r\n")[0].lower()
    assert b"\r\na: ok" in head and b"evil" not in head and b"\r\nb:" not in head


async def test_chunked_and_close_delimited_bodies_arrive_whole() -> None:
    async def chunked(conn: int, n: int, req: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
            b"6\r\ndata: \r\n2\r\n1\n\r\n1\r\n\n\r\n0\r\n\r\n"
        )

    async def until_close(conn: int, n: int, req: bytes) -> bytes | None:
        return AndClose(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the close")

    async with client() as c:
        async with scripted(chunked) as srv:
            assert await fetch(c, srv.url) == (200, b"data: 1\n\n")
            assert c.connections == 1  # the chunked exchange ended cleanly: pooled
        async with scripted(until_close) as srv:
            assert await fetch(c, srv.url) == (200, b"until the close")
            await wait_until(lambda: c.connections == 0, timeout=2, what="nothing pooled")


async def test_an_idle_connection_the_engine_closed_is_replaced_not_failed() -> None:
    async def close_second(conn: int, n: int, req: bytes) -> bytes | None:
        # Every connection answers its first request, then closes on the next without a
        # byte: what an engine does when its keep-alive timeout races a new request.
        return reply(b"ok") if n == 1 else None

    async with scripted(close_second) as srv, client() as c:
        for _ in range(4):
            assert await fetch(c, srv.url) == (200, b"ok")
        assert srv.connections == 4  # each later request found its pooled one closed


async def test_a_new_connection_that_closes_unanswered_is_a_connect_failure() -> None:
    async def never(conn: int, n: int, req: bytes) -> bytes | None:
        return None

    async with scripted(never) as srv, client() as c:
        with pytest.raises(AttemptFailed) as info:
            await fetch(c, srv.url)
    assert info.value.kind == "connect" and srv.connections == 1


async def test_refused_connection_and_malformed_answer() -> None:
    async def garbage(conn: int, n: int, req: bytes) -> bytes:
        return b"HTTP/1.1 abc nonsense\r\n\r\n"

    async with client() as c:
        async with scripted(garbage) as srv:
            url = srv.url
            with pytest.raises(AttemptFailed) as info:
                await fetch(c, url)
            assert info.value.kind == "protocol"
        with pytest.raises(AttemptFailed) as info:
            await fetch(c, url)  # nothing listens there any more
        assert info.value.kind == "connect"
        assert c.connections == 0


async def test_statuses_that_fail_over_and_redirects() -> None:
    async def by_path(conn: int, n: int, req: bytes) -> bytes:
        if n == 1:
            return reply(b"{}", status="503 Service Unavailable")
        if n == 2:
            return reply(b"", status="307 Temporary Redirect", extra="location: http://x/\r\n")
        return reply(b'{"error": "bad"}', status="400 Bad Request")

    async with scripted(by_path) as srv, client() as c:
        kinds = []
        for _ in range(2):
            with pytest.raises(AttemptFailed) as info:
                await fetch(c, srv.url)
            kinds.append((info.value.kind, info.value.status))
        assert kinds == [("status", 503), ("redirect", 307)]
        assert await fetch(c, srv.url) == (400, b'{"error": "bad"}')  # relayed, not retried
        assert srv.connections == 1  # answered errors keep the connection


async def test_first_byte_timeout_and_abandoned_response_close_the_connection() -> None:
    release = asyncio.Event()

    async def slow(conn: int, n: int, req: bytes) -> bytes:
        await release.wait()
        return reply(b"late")

    async with scripted(slow) as srv, client(first_byte=0.2) as c:
        with pytest.raises(AttemptFailed) as info:
            await fetch(c, srv.url)
        assert info.value.kind == "timeout"
        assert c.connections == 0
        release.set()
        await wait_until(lambda: srv.open_now == 0, timeout=2, what="engine saw the close")


async def test_stream_abandoned_midway_disconnects_the_engine() -> None:
    async def stream(conn: int, n: int, req: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n4\r\nab\n\n\r\n"  # and never the end
        )

    async with scripted(stream) as srv, client(idle=0.2) as c:
        opened = await c.open(backend(srv.url), "POST", "/v1/chat/completions", b"{}", {})
        assert opened.first_chunk == b"ab\n\n" and opened.streamed
        with pytest.raises(TimeoutError):
            await opened.response.read()  # the idle limit between chunks
        opened.close()
        assert c.connections == 0
        await wait_until(lambda: srv.open_now == 0, timeout=2, what="engine saw the close")


async def test_connection_limit_per_origin_queues_then_times_out() -> None:
    gate = asyncio.Event()

    async def gated(conn: int, n: int, req: bytes) -> bytes:
        await gate.wait()
        return reply(b"ok")

    async with scripted(gated) as srv, client(max_connections_per_host=1) as c:
        first = asyncio.create_task(fetch(c, srv.url))
        second = asyncio.create_task(fetch(c, srv.url))
        await wait_until(lambda: len(srv.requests) == 1, timeout=2, what="first request")
        gate.set()
        assert await first == (200, b"ok") and await second == (200, b"ok")
        assert srv.connections == 1  # the second waited for the first's connection

    gate.clear()
    async with scripted(gated) as srv, client(max_connections_per_host=1, pool_acquire=0.2) as c:
        held = asyncio.create_task(fetch(c, srv.url))
        await wait_until(lambda: len(srv.requests) == 1, timeout=2, what="first request")
        with pytest.raises(AttemptFailed) as info:
            await fetch(c, srv.url)
        assert info.value.kind == "pool"  # the router's own limit, not the engine's fault
        gate.set()
        assert await held == (200, b"ok")
        assert await fetch(c, srv.url) == (200, b"ok")  # the slot came back


async def test_expired_idle_connections_are_not_reused() -> None:
    async def ok(conn: int, n: int, req: bytes) -> bytes:
        return reply(b"ok")

    async with scripted(ok) as srv, client(keepalive_expiry=0.0) as c:
        for _ in range(3):
            assert await fetch(c, srv.url) == (200, b"ok")
        assert srv.connections == 3


async def test_https_origin_with_verified_certificate(tmp_path: Path) -> None:
    server_ctx, cert = tls_server_context(tmp_path)

    async def ok(conn: int, n: int, req: bytes) -> bytes:
        return reply(b"secret-free")

    async with scripted(ok, server_ctx) as srv:
        trusting = UpstreamClient(
            Timeouts(), Limits(), ssl_context=ssl.create_default_context(cafile=str(cert))
        )
        await trusting.start()
        assert await trusting.probe(backend(srv.url), {}) is not None
        assert await fetch(trusting, srv.url) == (200, b"secret-free")
        await trusting.close()

        # The system trust store does not know this certificate: refused, not sent.
        async with client() as untrusting:
            with pytest.raises(AttemptFailed) as info:
                await fetch(untrusting, srv.url)
            assert info.value.kind == "connect" and untrusting.connections == 0
        assert len(srv.requests) == 2


async def test_a_reader_slower_than_the_engine_holds_a_bounded_buffer() -> None:
    size = 16 * 1024 * 1024  # well beyond the kernel's socket buffers
    writers: list[asyncio.StreamWriter] = []

    async def big(conn: int, n: int, req: bytes) -> bytes:
        return reply(b"x" * size)

    async with scripted(big) as srv, client() as c:
        opened = await c.open(backend(srv.url), "POST", "/v1/chat/completions", b"{}", {})
        writers.extend(srv.writers)
        # Not reading: the client stops reading the socket and the rest of the answer
        # waits at the engine, not in the router (white-box: aiohttp's StreamReader).
        transport = writers[0].transport
        await wait_until(
            lambda: transport.get_write_buffer_size() > 0, timeout=5, what="backpressure"
        )
        received_so_far = opened.response._raw.content.total_bytes
        assert received_so_far <= 4 * 1024 * 1024, received_so_far
        received = len(opened.first_chunk)
        while chunk := await opened.response.read():
            received += len(chunk)
        opened.close()
        assert received == size
        assert await fetch(c, srv.url) == (200, b"x" * size)  # the connection was reused
        assert srv.connections == 1


async def test_a_backend_with_an_unusable_url_is_a_failed_attempt() -> None:
    async with client() as c:
        for url in ("http://", "http://host:99999", "ftp://host"):
            with pytest.raises(AttemptFailed) as info:
                await fetch(c, url)
            assert info.value.kind == "connect"
