"""Tenant isolation against adversarial upstreams, through the real router.

Two engines on 127.0.0.1 misbehave on purpose, request after request, in every way an
engine, a sidecar or a peer router could: bytes after a complete answer (a whole second
answer, or the start of one), an unsolicited answer while the connection is idle,
duplicate or conflicting framing, oversized heads, a 204 with a body, `chunked, gzip`.
Every stray byte they send carries the marker of *another* request they served. Many
requests from two tenants run interleaved through one router; each carries its own marker
(its x-request-id, which the router forwards).

What must hold:
- no client ever receives a byte of another request's answer (no foreign marker in any
  response, whatever its status);
- a connection on which an engine misbehaved never carries another request (seen from
  the engine's side: nothing arrives on it afterwards);
- every misbehaviour really happened (the test is not vacuous).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import select
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from factory_router.policy.config import (
    EjectionConfig,
    Limits,
    RetryBudgetConfig,
    RouterConfig,
    Timeouts,
)
from factory_router.policy.fleet import Backend
from factory_router.upstream.client import AttemptFailed
from tests.unit.router.router_testkit import KEYS, backend, router, tls_server_context

MARKER = re.compile(rb"marker-[a-z]+-\d+")
CLEAN = ("clean", "clean-chunked")
TAINTED = (
    "trailing-complete",
    "trailing-partial",
    "unsolicited",
    "duplicate-length",
    "length-and-chunked",
    "oversized-head",
    "no-content-with-body",
    "chunked-gzip",
    "trailing-after-chunked",
)


def _answer(marker: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    body = b'{"marker": "' + marker + b'"}'
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n" + extra
        + b"content-length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def _chunked(marker: bytes, coding: bytes = b"chunked") -> bytes:
    data = b'data: {"marker": "' + marker + b'"}\n\n'
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: " + coding
        + b"\r\n\r\n" + b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"
    )  # fmt: skip


@dataclass
class AdversarialEngine:
    """Answers each request by the next behaviour of a shared schedule."""

    schedule: itertools.cycle[str]
    last_marker: list[bytes]  # shared: the marker of the last request any engine served
    url: str = ""
    seen: dict[str, int] = field(default_factory=dict)
    # connection number -> behaviours in order; a tainted one must be the last
    connections: dict[int, list[str]] = field(default_factory=dict)
    _next_conn: int = 0
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._next_conn += 1
        log = self.connections.setdefault(self._next_conn, [])
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length, marker = 0, b"marker-none-0"
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                    if name.strip().lower() == b"x-request-id":
                        marker = value.strip()
                await reader.readexactly(length)
                foreign = self.last_marker[0]
                self.last_marker[0] = marker
                behaviour = next(self.schedule)
                log.append(behaviour)
                answer = self._misbehave(behaviour, marker, foreign)
                writer.write(answer)
                await writer.drain()
                if behaviour == "unsolicited":
                    await asyncio.sleep(0)
                    sock = writer.get_extra_info("socket")
                    poller = select.poll()
                    poller.register(sock.fileno(), select.POLLIN)
                    if poller.poll(0):
                        # The router already sent its next request: whatever comes now
                        # is the answer to it, by HTTP/1.1's rules. Not a misbehaviour.
                        log[-1] = "clean"
                    else:
                        writer.write(_answer(foreign))
                        await writer.drain()
                self.seen[log[-1]] = self.seen.get(log[-1], 0) + 1
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    def _misbehave(behaviour: str, marker: bytes, foreign: bytes) -> bytes:
        own = _answer(marker)
        match behaviour:
            case "clean" | "unsolicited":
                return own
            case "clean-chunked":
                return _chunked(marker)
            case "trailing-complete":
                return own + _answer(foreign)
            case "trailing-partial":
                return own + _answer(foreign)[:60]
            case "duplicate-length":
                body = b'{"marker": "' + foreign + b'"}'
                return (
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: %d\r\n\r\n"
                    % len(body) + body
                )  # fmt: skip
            case "length-and-chunked":
                return _chunked(foreign).replace(
                    b"transfer-encoding", b"content-length: 5\r\ntransfer-encoding", 1
                )
            case "oversized-head":
                filler = b"".join(b"x-filler-%d: %s\r\n" % (i, b"f" * 200) for i in range(400))
                return _answer(foreign, extra=filler)
            case "no-content-with-body":
                return _answer(foreign, status=b"204 No Content")
            case "chunked-gzip":
                return _chunked(foreign, coding=b"chunked, gzip")
            case "trailing-after-chunked":
                return _chunked(marker) + _answer(foreign)
        raise AssertionError(behaviour)

    def tainted_then_reused(self) -> list[tuple[int, list[str]]]:
        return [
            (n, log) for n, log in self.connections.items() if any(b in TAINTED for b in log[:-1])
        ]


@contextlib.asynccontextmanager
async def adversaries(n: int) -> AsyncIterator[list[AdversarialEngine]]:
    schedule = itertools.cycle([*CLEAN, *TAINTED, "clean", *TAINTED[::-1], "clean-chunked"])
    shared = [b"marker-none-0"]
    engines = [AdversarialEngine(schedule, shared) for _ in range(n)]
    servers = []
    try:
        for engine in engines:
            server = await asyncio.start_server(engine.handle, "127.0.0.1", 0)
            engine.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            servers.append(server)
        yield engines
    finally:
        for engine in engines:
            for writer in list(engine._writers):
                writer.close()
        for server in servers:
            server.close()
            await server.wait_closed()


async def test_no_byte_of_one_request_reaches_another_requests_client() -> None:
    config = RouterConfig(
        timeouts=Timeouts(first_byte=5.0, idle=5.0, grace_period=2.0),
        limits=Limits(max_connections_per_host=4),  # few connections: many reuses
        # The engines misbehave on purpose half the time; ejecting them (what the router
        # should do) would leave few requests to check isolation on.
        ejection=EjectionConfig(consecutive_failures=1_000_000),
        retry_budget=RetryBudgetConfig(ratio=1.0, min_per_second=1000.0),
    )
    async with adversaries(2) as engines:
        backends = [backend(e, "pool-eu", "eu-west-1") for e in engines]
        async with (
            router(backends, config=config) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            tenants = [("eu-only", KEYS["eu"]), ("global", KEYS["global"])]
            counter = itertools.count()
            leaks: list[tuple[bytes, set[bytes]]] = []
            statuses: dict[int, int] = {}

            async def one_client(worker: int) -> None:
                name, key = tenants[worker % 2]
                for _ in range(30):
                    own = f"marker-{name.replace('-', '')}-{next(counter)}".encode()
                    response = await client.post(
                        "/v1/chat/completions",
                        headers={"authorization": f"Bearer {key}", "x-request-id": own.decode()},
                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                    )
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    everything = (
                        response.content + repr(sorted(response.headers.multi_items())).encode()
                    )
                    others = set(MARKER.findall(everything)) - {own}
                    if others:
                        leaks.append((own, others))

            await asyncio.gather(*(one_client(w) for w in range(12)))

    assert not leaks, leaks[:5]
    for engine in engines:
        assert not engine.tainted_then_reused(), engine.tainted_then_reused()[:3]
    seen = {b for engine in engines for b in engine.seen}
    assert set(TAINTED) <= seen, set(TAINTED) - seen  # every misbehaviour happened
    assert statuses.get(200, 0) > 100, statuses  # and the clean answers got through


async def test_an_unsolicited_answer_on_an_idle_connection_is_never_handed_out() -> None:
    """aiohttp alone queues an answer that arrives while its connection is pooled and gives
    it to the next request on that connection (checked on 3.14.5): the guard closes it."""
    from factory_router.upstream.client import UpstreamClient  # noqa: PLC0415

    go, dropped = asyncio.Event(), asyncio.Event()
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        try:
            while True:
                await _read_request(reader)
                requests += 1
                writer.write(_answer(b"marker-first-%d" % requests))
                await writer.drain()
                if requests == 1:
                    await go.wait()  # the client is done with its answer: idle in the pool
                    writer.write(_answer(b"marker-other-0"))
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            dropped.set()  # the client closed this connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = UpstreamClient(Timeouts(first_byte=5.0), Limits())
    await client.start()
    try:
        engine = Backend(id="p/x", model="m", pool="p", region="eu-west-1", url=url)
        for n in (1, 2):
            opened = await client.open(engine, "POST", "/v1/completions", b"{}", {})
            body = opened.first_chunk
            while chunk := await opened.response.read():
                body += chunk
            opened.close()
            assert MARKER.findall(body) == [b"marker-first-%d" % n], body
            if n == 1:
                go.set()
                await asyncio.wait_for(dropped.wait(), 5)  # the connection was not kept
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request off an engine's connection: its head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    return head, await reader.readexactly(int(length[1]) if length else 0)


def _chunked_answer(text: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked"
        b"\r\n\r\n%x\r\n" % len(text) + text + b"\r\n0\r\n\r\n"
    )


BAD_STREAMS = {
    # the end of a chunked answer and a whole second one, however the bytes are cut
    "chunked+chunked": _chunked_answer(b"marker-first-1") + _chunked_answer(b"marker-other-0"),
    "chunked+sized": _chunked_answer(b"marker-first-1") + _answer(b"marker-other-0"),
    "sized+chunked": _answer(b"marker-first-1") + _chunked_answer(b"marker-other-0"),
    "empty-chunked+chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    + _chunked_answer(b"marker-other-0"),
}
INTERIM = {  # an interim answer first: the exchange must still succeed
    "100+sized": b"HTTP/1.1 100 Continue\r\n\r\n" + _answer(b"marker-first-1"),
    "103+chunked": b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    + _chunked_answer(b"marker-first-1"),
}


async def _split_exchange(script: bytes, cut: int) -> tuple[list[bytes], int, int]:
    """Request 1 is answered with `script` cut in two writes at `cut`; request 2 (another
    tenant's) with its own answer. What each got, and how many requests reached the
    connection that carried request 1 after it (must be 0 if it misbehaved)."""
    from factory_router.upstream.client import UpstreamClient  # noqa: PLC0415

    seen_per_conn: list[int] = []
    all_sent = asyncio.Event()  # request 2 goes only after it: every byte precedes it

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen_per_conn.append(0)
        me = len(seen_per_conn) - 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head, _ = await _read_request(reader)
                seen_per_conn[me] += 1
                if b"x-tenant: a" in head.lower():
                    writer.write(script[:cut])
                    await writer.drain()
                    for _ in range(3):  # let the client's loop take the first part alone
                        await asyncio.sleep(0)
                    writer.write(script[cut:])
                    await writer.drain()
                    all_sent.set()
                else:
                    writer.write(_answer(b"marker-second-2"))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = UpstreamClient(Timeouts(first_byte=2.0, idle=2.0), Limits(max_connections_per_host=1))
    await client.start()
    bodies: list[bytes] = []
    try:
        engine = Backend(id="p/x", model="m", pool="p", region="eu-west-1", url=url)
        for tenant in ("a", "b"):
            if tenant == "b":
                await asyncio.wait_for(all_sent.wait(), 5)
            try:
                opened = await client.open(engine, "POST", "/v1/x", b"{}", {"x-tenant": tenant})
                body = opened.first_chunk
                with contextlib.suppress(Exception):  # a broken body is fine, a foreign one not
                    while chunk := await opened.response.read():
                        body += chunk
                opened.close()
            except AttemptFailed:
                body = b""
            bodies.append(body)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    return bodies, seen_per_conn[0], len(seen_per_conn)


async def test_answers_cut_anywhere_never_reach_the_next_request() -> None:
    """Every cut point of each misbehaving byte stream: the second request never gets the
    forged answer, and the connection that carried it is not reused."""
    for name, script in BAD_STREAMS.items():
        for cut in range(1, len(script)):
            bodies, on_first_conn, _ = await _split_exchange(script, cut)
            assert b"marker-other" not in bodies[1], (name, cut, bodies)
            assert MARKER.findall(bodies[1]) == [b"marker-second-2"], (name, cut, bodies)
            assert on_first_conn == 1, (name, cut, "the tainted connection was reused")


async def test_interim_answers_are_skipped_not_failed() -> None:
    for name, script in INTERIM.items():
        for cut in range(1, len(script)):
            bodies, _, _ = await _split_exchange(script, cut)
            assert MARKER.findall(bodies[0]) == [b"marker-first-1"], (name, cut, bodies)
            assert MARKER.findall(bodies[1]) == [b"marker-second-2"], (name, cut, bodies)


async def _echo_engine() -> tuple[asyncio.Server, list[int]]:
    """An engine that answers each request with its body; counts requests per connection."""
    per_conn: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_conn.append(0)
        me = len(per_conn) - 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                _, body = await _read_request(reader)
                per_conn[me] += 1
                writer.write(_answer(body))
                await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), per_conn


async def _fetch(client: object, url: str, body: bytes) -> bytes:
    from factory_router.upstream.client import UpstreamClient  # noqa: PLC0415

    assert isinstance(client, UpstreamClient)
    engine = Backend(id="p/x", model="m", pool="p", region="eu-west-1", url=url)
    opened = await client.open(engine, "POST", "/v1/x", body, {})
    data = opened.first_chunk
    while chunk := await opened.response.read():
        data += chunk
    opened.close()
    return data


async def test_an_answer_queued_on_a_pooled_connection_is_never_read() -> None:
    """Whatever path parses an answer while the connection is pooled (a TLS flush, a future
    aiohttp change), taking the connection must not hand that answer to the next request:
    dropping it is not enough, the queue is emptied too."""
    from aiohttp.client_proto import ResponseHandler  # noqa: PLC0415

    from factory_router.upstream.client import UpstreamClient  # noqa: PLC0415

    server, per_conn = await _echo_engine()
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = UpstreamClient(Timeouts(first_byte=2.0), Limits(max_connections_per_host=1))
    await client.start()
    try:
        assert MARKER.findall(await _fetch(client, url, b"marker-first-1")) == [b"marker-first-1"]
        assert client._connector is not None
        pooled = [proto for conns in client._connector._conns.values() for proto, _ in conns]
        assert len(pooled) == 1
        # Parse a forged answer on the idle connection, past the guard's own entry point.
        ResponseHandler.data_received(pooled[0], _answer(b"marker-other-0"))
        second = await _fetch(client, url, b"marker-second-2")
        assert MARKER.findall(second) == [b"marker-second-2"], second
        assert per_conn == [1, 1]  # the tainted connection carried nothing more
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_tls_upstream_connections_are_never_pooled(tmp_path: Path) -> None:
    """asyncio's TLS layer holds records the guard cannot see (a partial record, reading
    paused): an https upstream gets a new connection per request, so a stray answer there
    has no later request to reach."""
    import ssl  # noqa: PLC0415

    from factory_router.upstream.client import UpstreamClient  # noqa: PLC0415

    server_ctx, cert = tls_server_context(tmp_path)
    stray_sent = asyncio.Event()
    per_conn: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        per_conn.append(0)
        me = len(per_conn) - 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            while True:
                _, body = await _read_request(reader)
                per_conn[me] += 1
                writer.write(_answer(body))
                await writer.drain()
                if not stray_sent.is_set():
                    writer.write(_answer(b"marker-other-0"))  # unsolicited, over TLS
                    await writer.drain()
                    stray_sent.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = UpstreamClient(
        Timeouts(first_byte=5.0), Limits(), ssl_context=ssl.create_default_context(cafile=cert)
    )
    await client.start()
    try:
        first = await _fetch(client, url, b"marker-first-1")
        await asyncio.wait_for(stray_sent.wait(), 5)
        second = await _fetch(client, url, b"marker-second-2")
        assert MARKER.findall(first) == [b"marker-first-1"], first
        assert MARKER.findall(second) == [b"marker-second-2"], second
        assert per_conn == [1, 1]  # one request per TLS connection
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
