"""The router's HTTP/1.1 server against real sockets: raw requests written by hand, so
that keep-alive, pipelining, HTTP/1.0, limits, slow senders, disconnects, back-pressure
and shutdown are each seen on the wire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httptools
import pytest

from factory_router.app.http_message import ClientGone, Request
from factory_router.app.http_server import HttpServer, ServerLimits
from tests.unit.router.router_testkit import wait_until

LIMITS = ServerLimits(
    max_head_bytes=2048, max_body_bytes=1024, client_idle=30.0, client_request=30.0
)


class Answer:
    """A response as the client read it."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    def json(self) -> dict[str, object]:
        doc: dict[str, object] = json.loads(self.body)
        return doc


class Client:
    """One raw TCP connection to the server, reading responses with llhttp."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._parser = httptools.HttpResponseParser(self)
        self._current = Answer()
        self._complete: list[Answer] = []

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._current.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._current.body += body

    def on_message_complete(self) -> None:
        self._current.status = self._parser.get_status_code()
        self._complete.append(self._current)
        self._current = Answer()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answers(self, n: int) -> list[Answer]:
        """The next `n` responses."""
        while len(self._complete) < n:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            if not data:
                raise AssertionError(f"closed after {len(self._complete)} answer(s)")
            self._parser.feed_data(data)
        got, self._complete = self._complete[:n], self._complete[n:]
        return got

    async def closed(self) -> bool:
        """True once the server closed the connection (5 s at most)."""
        await self.raw()
        return True

    async def raw(self) -> bytes:
        """Everything until the server closes."""
        out = b""
        while data := await asyncio.wait_for(self.reader.read(65536), 5):
            out += data
        return out


def parse_one(raw: bytes) -> Answer:
    """The one response in `raw`."""
    client = Client.__new__(Client)
    client._parser = httptools.HttpResponseParser(client)
    client._current, client._complete = Answer(), []
    client._parser.feed_data(raw)
    (answer,) = client._complete
    return answer


@asynccontextmanager
async def serving(
    handler: Callable[[Request], Awaitable[None]], limits: ServerLimits = LIMITS
) -> AsyncIterator[tuple[HttpServer, Callable[[], Awaitable[Client]]]]:
    server = HttpServer(handler, limits)
    port = await server.start("127.0.0.1", 0)
    clients: list[Client] = []

    async def connect() -> Client:
        client = Client(*await asyncio.open_connection("127.0.0.1", port))
        clients.append(client)
        return client

    try:
        yield server, connect
    finally:
        for c in clients:
            c.writer.close()
        await server.shutdown(1.0)


async def echo(request: Request) -> None:
    doc = {"method": request.method, "path": request.path, "query": request.query,
           "body": request.body.decode(), "too_large": request.body_too_large,
           "x": request.headers.get("x-repeat")}  # fmt: skip
    request.respond(200, {"content-type": "application/json"}, json.dumps(doc).encode())


def post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


async def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    async with serving(echo) as (_, connect):
        c = await connect()
        await c.send(post("/a?x=1&x=2&y=%20z", b'{"n": 1}', "x-repeat: 1\r\nx-repeat: 2\r\n"))
        (first,) = await c.answers(1)
        assert first.status == 200 and "date" in first.headers
        assert first.json() == {"method": "POST", "path": "/a", "query": {"x": "1", "y": " z"},
                                "body": '{"n": 1}', "too_large": False, "x": "1, 2"}  # fmt: skip
        # Three more in one write, the middle one chunked: all answered, in order.
        chunked = (
            b"POST /c HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await c.send(post("/b", b"1") + chunked + post("/d", b"4"))
        answers = await c.answers(3)
        assert [(a.json()["path"], a.json()["body"]) for a in answers] == [
            ("/b", "1"), ("/c", "abcde"), ("/d", "4"),
        ]  # fmt: skip


async def test_http10_closes_and_a_stream_is_close_delimited() -> None:
    async def stream(request: Request) -> None:
        await request.start(200, {"content-type": "text/event-stream"})
        for i in range(3):
            await request.write(b"data: %d\n\n" % i)
        await request.end()

    async with serving(stream) as (_, connect):
        c = await connect()
        await c.send(b"GET /s HTTP/1.0\r\n\r\n")
        raw = await c.raw()  # the server closes: that is the end of the body
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"connection: close" in head and b"transfer-encoding" not in head
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        c = await connect()
        await c.send(b"GET /s HTTP/1.1\r\nhost: t\r\n\r\n")  # 1.1: chunked, kept alive
        (answer,) = await c.answers(1)
        assert answer.headers["transfer-encoding"] == "chunked"
        assert answer.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nx-big: " + b"a" * 4096 + b"\r\n\r\n", 431),
    ],
)
async def test_malformed_or_oversized_heads_are_refused_and_closed(
    request_bytes: bytes, status: int
) -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> None:
        seen.append(request)
        await echo(request)

    async with serving(handler) as (_, connect):
        c = await connect()
        await c.send(request_bytes)
        answer = parse_one(await c.raw())
        assert answer.status == status
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
        assert answer.headers["connection"] == "close"
        assert seen == []


async def test_a_body_over_the_limit_reaches_the_handler_unread_and_the_rest_is_dropped() -> None:
    async def handler(request: Request) -> None:
        status = 413 if request.body_too_large else 200
        request.respond(status, {}, b"too large" if status == 413 else request.body)

    async with serving(handler) as (_, connect):
        # Declared too large, with Expect: the answer comes without a 100 Continue.
        c = await connect()
        head = "POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\nexpect: 100-continue\r\n"
        await c.send(head.encode() + b"\r\n")
        (answer,) = await c.answers(1)
        assert answer.status == 413 and answer.headers["connection"] == "close"
        # Not declared (chunked) and sent whole anyway: answered, read to its end, closed.
        c = await connect()
        chunks = b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
        await c.send(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n" + chunks)
        (answer,) = await c.answers(1)
        assert answer.status == 413
        assert await c.closed()


async def test_head_has_no_body_and_a_failing_handler_is_an_openai_500() -> None:
    async def handler(request: Request) -> None:
        if request.path == "/boom":
            raise RuntimeError("bug")
        request.respond(200, {"x-bad": "a\r\nset-cookie: x", "x-ok": "1"}, b"12345")

    async with serving(handler) as (_, connect):
        c = await connect()
        await c.send(b"HEAD /h HTTP/1.1\r\nhost: t\r\n\r\n")
        raw = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
        assert b"content-length: 5" in raw and b"x-ok: 1" in raw
        assert b"set-cookie" not in raw and b"x-bad" not in raw  # no header injection
        await c.send(b"GET /boom HTTP/1.1\r\nhost: t\r\n\r\n")  # the HEAD sent no body
        (answer,) = await c.answers(1)
        assert answer.status == 500 and answer.json()["error"]["type"] == "api_error"  # type: ignore[index]


async def test_slow_senders_and_idle_connections_are_closed() -> None:
    limits = ServerLimits(
        max_head_bytes=2048, max_body_bytes=1024, client_idle=0.5, client_request=0.5
    )
    async with serving(echo, limits) as (server, connect):
        slow = await connect()
        await slow.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nabc")
        raw = await slow.raw()  # the server gives up on the rest: 408, then close
        assert raw.startswith(b"HTTP/1.1 408 ")
        idle = await connect()
        await idle.send(post("/", b"1"))
        await idle.answers(1)
        assert await idle.closed()  # no second request within client_idle
        await wait_until(lambda: not server.connections, timeout=5)


async def test_a_client_that_leaves_cancels_its_handler() -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def handler(request: Request) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # an upstream that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with serving(handler) as (server, connect):
        c = await connect()
        await c.send(post("/", b"{}"))
        await asyncio.wait_for(started.wait(), 5)
        c.writer.close()
        await asyncio.wait_for(cancelled.wait(), 5)
        await wait_until(lambda: not server.connections, timeout=5)


async def test_a_client_that_does_not_read_pauses_the_stream_then_is_dropped() -> None:
    written = 0
    outcome: list[str] = []

    async def handler(request: Request) -> None:
        nonlocal written
        await request.start(200, {"content-type": "text/event-stream"})
        chunk = b"x" * 65536
        try:
            for _ in range(1024):  # 64 MiB if nothing pushed back
                await request.write(chunk)
                written += len(chunk)
        except ClientGone as exc:
            outcome.append(str(exc))
            raise
        outcome.append("done")

    limits = ServerLimits(
        max_head_bytes=2048, max_body_bytes=1024, client_idle=1.0, client_request=30.0
    )
    async with serving(handler, limits) as (server, connect):
        c = await connect()
        await c.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        await wait_until(lambda: written > 0, timeout=5)
        (conn,) = server.connections
        await wait_until(lambda: conn._write_paused, timeout=5, what="writing paused")
        assert written < 16 * 1024 * 1024
        # No byte taken for client_idle: the server gives up on the client.
        await wait_until(lambda: bool(outcome), timeout=10, what="the handler stopped")
        assert outcome == ["client stopped reading"]
        await wait_until(lambda: not server.connections, timeout=5)


async def test_shutdown_finishes_responses_in_progress_and_refuses_new_connections() -> None:
    release = asyncio.Event()

    async def handler(request: Request) -> None:
        if request.path == "/slow":
            await release.wait()
        request.respond(200, {}, b"done")

    server = HttpServer(handler, LIMITS)
    port = await server.start("127.0.0.1", 0)
    busy = Client(*await asyncio.open_connection("127.0.0.1", port))
    idle = Client(*await asyncio.open_connection("127.0.0.1", port))
    await idle.send(b"GET /fast HTTP/1.1\r\nhost: t\r\n\r\n")
    await idle.answers(1)
    await busy.send(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
    await wait_until(lambda: not all(c.idle for c in server.connections), timeout=5)
    stopping = asyncio.create_task(server.shutdown(5.0))
    assert await idle.closed()  # idle keep-alive connections close at once
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    release.set()
    (answer,) = await busy.answers(1)
    assert answer.body == b"done" and answer.headers["connection"] == "close"
    await asyncio.wait_for(stopping, 5)
    assert not server.connections
    for c in (busy, idle):
        c.writer.close()


async def test_an_upgrade_request_is_answered_over_http11_then_closed() -> None:
    async with serving(echo) as (_, connect):
        c = await connect()
        await c.send(b"GET /u HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n")
        raw = await c.raw()
        assert raw.startswith(b"HTTP/1.1 200 ") and b"connection: close" in raw


async def test_a_client_that_pipelines_without_reading_gets_no_more_answers_queued() -> None:
    answered = 0

    async def big(request: Request) -> None:
        nonlocal answered
        answered += 1
        request.respond(200, {}, b"x" * 65536)

    async with serving(big) as (server, connect):
        c = await connect()
        c.writer.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n" * 2000)  # 128 MiB of answers
        await wait_until(lambda: bool(server.connections), timeout=5)
        (conn,) = server.connections
        await wait_until(lambda: conn._write_paused, timeout=5, what="writing paused")
        # The next request waits for the answer to be taken: nothing piles up.
        assert answered < 100
        assert conn._transport is not None
        assert conn._transport.get_write_buffer_size() < 8 * 65536


async def test_an_endless_header_line_is_a_431() -> None:
    async with serving(echo) as (server, connect):
        c = await connect()
        await c.send(b"GET / HTTP/1.1\r\nx-endless: ")
        await wait_until(lambda: any(conn.head_open for conn in server.connections), timeout=5)
        for _ in range(4):  # llhttp hands a header over only once it ends
            await c.send(b"a" * 1024)
        assert parse_one(await c.raw()).status == 431


async def test_nothing_is_served_behind_a_closing_response() -> None:
    seen: list[str] = []

    async def handler(request: Request) -> None:
        seen.append(request.path)
        if request.path == "/stream":  # HTTP/1.0: no length, so the close ends the body
            await request.start(200, {"content-type": "text/event-stream"})
            await request.write(b"data: 1\n\n")
            return
        await echo(request)

    async with serving(handler) as (_, connect):
        c = await connect()
        ka = "connection: keep-alive\r\n"
        await c.send(f"GET /stream HTTP/1.0\r\n{ka}\r\nGET /after HTTP/1.0\r\n{ka}\r\n".encode())
        raw = await c.raw()
        assert raw.count(b"HTTP/1.1 ") == 1 and raw.endswith(b"data: 1\n\n")
        # Behind a body over the limit: the 413, and nothing more.
        c = await connect()
        big = post("/big", b"x" * 2000)
        await c.send(big + post("/v1/chat/completions", b"{}"))
        raw = await c.raw()
        assert raw.count(b"HTTP/1.1 ") == 1 and parse_one(raw).json()["too_large"] is True
        # HTTP/1.0 keep-alive is said so, and kept.
        c = await connect()
        await c.send(f"GET /ka HTTP/1.0\r\n{ka}\r\n".encode())
        (answer,) = await c.answers(1)
        assert answer.headers["connection"] == "keep-alive"
        await c.send(b"GET /again HTTP/1.1\r\nhost: t\r\n\r\n")
        await c.answers(1)
    assert seen == ["/stream", "/big", "/ka", "/again"]


async def test_a_closed_connection_whose_client_does_not_read_is_aborted() -> None:
    limits = ServerLimits(
        max_head_bytes=2048, max_body_bytes=1024, client_idle=1.0, client_request=30.0
    )

    async def huge(request: Request) -> None:
        request.keep_alive = False  # answer, then close (which waits for the bytes to go)
        request.respond(200, {}, b"x" * 16 * 1024 * 1024)

    async with serving(huge, limits) as (server, connect):
        c = await connect()
        await c.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")  # and never read
        await wait_until(lambda: bool(server.connections), timeout=5)
        await wait_until(lambda: not server.connections, timeout=10, what="aborted")
