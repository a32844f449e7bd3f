"""A lean HTTP/1.1 client for the router's upstream hop: asyncio protocols, llhttp parsing.

Why not a general-purpose client: the upstream client was most of the router's added
latency. In bench/router_overhead/stack_compare.py (a minimal proxy on aiohttp's server,
JSON, 16 concurrent, 2 CPUs) the proxy used 0.32 ms of CPU per request with aiohttp's
client and 0.17 ms with this one; aiosonic (0.37 ms) and BlackSheep's client (0.55 ms) were
no better than aiohttp's, httpx's several times worse. Parsing is httptools (llhttp, the
parser of Node.js and uvicorn); this module only frames requests and pools connections.

What it does, and only that:
- keep-alive connections pooled per origin (scheme, host, port), with a limit on the whole
  pool and one per origin; a request waits for a free slot up to `pool_acquire` seconds;
- idle connections expire after `keepalive_expiry` seconds; a connection the engine has
  closed leaves the pool when the close is seen;
- one request at a time per connection (no pipelining); the request is written in one
  call; the response is read as it arrives, with Content-Length, chunked, or
  close-delimited bodies; read buffering is bounded (reading pauses above `_HIGH_WATER`);
- http and https (TLS with the system's default trust store and host name check);
- a response not read to its end, or abandoned, closes its connection: an engine sees a
  disconnect and aborts the generation.

Redirects are never followed and cookies never kept: they are not HTTP client features
here, just statuses and headers.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

_HIGH_WATER = 256 * 1024  # buffered response bytes above which reading pauses
_LOW_WATER = 64 * 1024
_MAX_ORIGINS = 1024  # origins without connections are forgotten beyond this many


class ConnectionBroken(Exception):
    """The connection failed or closed before the response was complete."""


class ProtocolViolation(Exception):
    """The engine's answer was not valid HTTP/1.1."""


@dataclass(frozen=True)
class Origin:
    """Where a base URL points: the pool key, plus the path prefix and Host header."""

    scheme: str
    host: str
    port: int
    prefix: str  # path of the base URL without a trailing slash ("" for none)
    host_header: bytes

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        header = shown if port == default else f"{shown}:{port}"
        return cls(parts.scheme, host, port, parts.path.rstrip("/"), header.encode("idna"))


class Response:
    """One response: status and headers are known; the body is read with `read()`."""

    __slots__ = ("_conn", "content_length", "headers", "status")

    def __init__(self, conn: Connection, status: int, headers: dict[str, str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers  # lower-case names; a repeated header keeps its last value
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.content_length = int(length) if length and length.isdigit() and not chunked else None

    @property
    def content_type(self) -> str:
        """The media type, lower-case, without parameters ("" when absent)."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    async def read(self, idle: float) -> bytes:
        """The next body bytes as they arrived; b"" once the body is complete.
        Raises TimeoutError after `idle` seconds without a byte, ConnectionBroken if
        the connection ends first, ProtocolViolation on a malformed body."""
        return await self._conn.read(idle)

    def release(self) -> None:
        """Done with this response: a connection whose exchange ended cleanly goes back
        to the pool; any other is closed (the engine sees the disconnect)."""
        self._conn.finish()


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to one origin, one exchange at a time."""

    def __init__(self, pool: _OriginPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reused = False  # has carried an exchange before this one
        self.idle_since = 0.0
        self._lost = False
        self._paused = False
        # The exchange in progress.
        self._head: asyncio.Future[Response] | None = None
        self._headers: dict[str, str] = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._close_delimited = False
        self.complete = False
        self._keep_alive = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._head is None:  # bytes while idle: the engine is not speaking HTTP to us
            self._fail(ProtocolViolation("data on an idle connection"))
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ProtocolViolation(f"malformed response: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._pool.forget(self)
        if self._head is not None and not self.complete:
            if self._close_delimited and self._head.done() and exc is None:
                self._end_of_message(keep_alive=False)  # the close ends the body
            else:
                self._fail(ConnectionBroken("connection closed by the engine"))

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        head = self._head
        if status < 200:  # never asked for (no Expect, no Upgrade)
            self._fail(ProtocolViolation(f"unexpected interim status {status}"))
            return
        response = Response(self, status, self._headers)
        self._close_delimited = response.content_length is None and (
            "chunked" not in self._headers.get("transfer-encoding", "").lower()
        )
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        transport = self.transport
        if self._buffered > _HIGH_WATER and not self._paused and transport is not None:
            self._pause(transport)
        self._wake()

    def on_message_complete(self) -> None:
        self._end_of_message(keep_alive=self._parser.should_keep_alive())

    # -- the exchange -------------------------------------------------------------------

    def begin(self, request: bytes) -> asyncio.Future[Response]:
        """Send one request (head and body in one write); the future resolves with the
        response's status and headers."""
        assert self.transport is not None and self._head is None
        self._head = self._loop.create_future()
        self._chunks.clear()
        self._buffered = 0
        self._error = None
        self.complete = False
        self._close_delimited = False
        self.transport.write(request)
        return self._head

    async def read(self, idle: float) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _LOW_WATER:
                    self._resume()
                return chunk
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(idle, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None

    def finish(self) -> None:
        """The exchange is over for the caller: pool the connection or close it."""
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.cancel()
        if self.complete and self._keep_alive and self._error is None and not self._lost:
            if self._paused:  # a caller may stop reading a complete body early
                self._resume()
            self.reused = True
            self.idle_since = self._loop.time()
            self._pool.put_idle(self)
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._pool.forget(self)

    def _pause(self, transport: asyncio.Transport) -> None:
        if not transport.is_closing():
            self._paused = True
            transport.pause_reading()

    def _resume(self) -> None:
        self._paused = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _end_of_message(self, *, keep_alive: bool) -> None:
        self.complete = True
        self._keep_alive = keep_alive
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self._error is None and not self.complete:
            self._error = error
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _OriginPool:
    """The connections to one origin: idle ones (most recent last) and a count of all."""

    def __init__(self, owner: ConnectionPool, origin: Origin) -> None:
        self.owner = owner
        self.origin = origin
        self.loop = owner.loop
        self.idle: list[Connection] = []
        self.open: set[Connection] = set()

    def put_idle(self, conn: Connection) -> None:
        if self.owner.closed:
            conn.close()
            return
        self.idle.append(conn)
        self.owner.slot_freed()

    def forget(self, conn: Connection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            if conn in self.idle:
                self.idle.remove(conn)
            self.owner.connection_gone()


class ConnectionPool:
    """Keep-alive connections to every origin the router talks to."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_per_origin: int,
        keepalive_expiry: float,
        connect_timeout: float,
        acquire_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context` for https origins; default: the system's trust store."""
        self.loop = asyncio.get_running_loop()
        self.max_connections = max_connections
        self.max_per_origin = max_per_origin
        self.keepalive_expiry = keepalive_expiry
        self.connect_timeout = connect_timeout
        self.acquire_timeout = acquire_timeout
        self.closed = False
        self._origins: dict[Origin, _OriginPool] = {}
        self._total = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl = ssl_context

    @property
    def connections(self) -> int:
        return self._total

    async def acquire(self, origin: Origin) -> Connection:
        """An idle connection to `origin`, or a new one when the limits allow."""
        pool = self._origins.get(origin)
        if pool is None:
            if len(self._origins) >= _MAX_ORIGINS:  # endpoints come and go: drop unused
                self._origins = {o: p for o, p in self._origins.items() if p.open}
            pool = self._origins[origin] = _OriginPool(self, origin)
        deadline = self.loop.time() + self.acquire_timeout
        while True:
            if self.closed:
                raise ConnectionBroken("the connection pool is closed")
            conn = self._take_idle(pool)
            if conn is not None:
                return conn
            if self._total < self.max_connections and len(pool.open) < self.max_per_origin:
                return await self._connect(pool)
            if self._evict_other_idle(pool):
                continue
            await self._wait_for_slot(deadline)

    def _take_idle(self, pool: _OriginPool) -> Connection | None:
        expired_before = self.loop.time() - self.keepalive_expiry
        while pool.idle:
            conn = pool.idle.pop()
            transport = conn.transport
            if conn.idle_since >= expired_before and transport and not transport.is_closing():
                return conn
            conn.close()
        return None

    def _evict_other_idle(self, keep: _OriginPool) -> bool:
        """At the global limit: close the oldest idle connection of another origin."""
        if self._total < self.max_connections or len(keep.open) >= self.max_per_origin:
            return False
        oldest: Connection | None = None
        for pool in self._origins.values():
            first = pool.idle[0] if pool is not keep and pool.idle else None
            if first is not None and (oldest is None or first.idle_since < oldest.idle_since):
                oldest = first
        if oldest is None:
            return False
        oldest.close()
        return True

    async def _wait_for_slot(self, deadline: float) -> None:
        remaining = deadline - self.loop.time()
        if remaining <= 0:
            raise TimeoutError("no free upstream connection")
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(remaining):
                await waiter
        except TimeoutError:
            raise TimeoutError("no free upstream connection") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _connect(self, pool: _OriginPool) -> Connection:
        origin = pool.origin
        conn = Connection(pool)
        pool.open.add(conn)  # the slot is taken while connecting
        self._total += 1
        context = self._ssl_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
        except BaseException:
            pool.forget(conn)
            raise
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def slot_freed(self) -> None:
        # Every waiter looks again (they may wait for different origins); this happens
        # only at the connection limits.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def connection_gone(self) -> None:
        self._total -= 1
        self.slot_freed()

    async def close(self) -> None:
        self.closed = True
        for pool in list(self._origins.values()):
            for conn in list(pool.open):
                conn.close()
        self._origins.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionBroken("the connection pool is closed"))
        self._waiters.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost


def request_head(
    method: str, origin: Origin, path: str, headers: Mapping[str, str], body_length: int | None
) -> bytes:
    """The request line and headers. Header values with CR or LF are dropped (they cannot
    come from a parsed request, but the writer does not rely on that)."""
    lines = [f"{method} {origin.prefix}{path} HTTP/1.1\r\n".encode(), b"host: ", origin.host_header]
    lines.append(b"\r\n")
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            continue
        lines.append(f"{name}: {value}\r\n".encode())
    if body_length is not None:
        lines.append(b"content-length: %d\r\n" % body_length)
    lines.append(b"\r\n")
    return b"".join(lines)
