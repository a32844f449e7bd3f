"""The router's HTTP/1.1 server: connections, request parsing and response framing.

Why not a web framework: at 100 req/s (bench/router_overhead) most of the router's added
latency was the server side. A pass-through on aiohttp's server, and a bare ASGI app on
uvicorn, both added about 0.5 ms p50 to a JSON request; the same pass-through on asyncio
protocols with llhttp added 0.3 ms, and used half the CPU per request. Parsing is
httptools (llhttp, the parser of Node.js and uvicorn); this module runs the connection's
life, and `http_message` frames the responses.

What it does, and only that:
- HTTP/1.0 and 1.1, keep-alive, pipelined requests answered in order, one at a time;
  reading pauses while one waits, and the next is run only once the client has taken
  the previous answer; nothing behind a response that closes the connection is served;
- a request reaches its handler once its body is complete; a body declared or grown
  beyond `max_body_bytes` reaches it at once, flagged and unread (the handler answers 413;
  what the client still sends is read and dropped, then the connection closes);
- a head larger than `max_head_bytes` (an endless header line included) gets 431, a
  malformed request 400, both in OpenAI's error shape, and the connection closes;
- a connection idle between requests for `client_idle` seconds, or a request not
  received whole within `client_request` seconds of its first byte, is closed;
- a response is written whole (one write) or streamed (chunked, or sized by its
  Content-Length), with write back-pressure; a client that takes no bytes for
  `client_idle` seconds is disconnected, a closing connection included;
- a client that disconnects before its response is complete cancels the handler, which
  is how an abandoned stream closes its upstream request;
- shutdown: stop listening, close idle connections, let the requests in progress finish
  within a grace period, then abort what is left.

Upgrades (h2c, websockets) are not served: such a request is answered over HTTP/1.1 and
the connection closes after it. While a pipelined request waits (reading paused), a
client that disconnects is noticed only when an answer is written to it; clients of an
OpenAI API do not pipeline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, cast

import httptools

from factory_router.app.http_message import ClientGone, Request, error_response
from factory_router.policy.errors import BadRequest, HeadTooLarge, RequestTimeout, RouterError

log = logging.getLogger("factory_router.http")

_SWEEP_SECONDS = 1.0  # how often idle and slow connections are looked for
_LINGER_SECONDS = 5.0  # after a 413, how long the rest of a body is read and dropped


@dataclass(frozen=True)
class ServerLimits:
    max_head_bytes: int  # request line + headers
    max_body_bytes: int
    client_idle: float  # seconds a connection may wait for its next request, or not read
    client_request: float  # seconds from a request's first byte to its last


Handler = Callable[[Request], Awaitable[None]]


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and runs their handlers one at a time."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self._loop = server.loop
        self._limits = server.limits
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self.closing = False  # close once the response in progress is complete
        self._refused = False  # answered (or will answer) a broken request: read no more
        self._dropping = False  # after a body over the limit: no further request is served
        self._raw_head = 0  # bytes received while a head stayed incomplete
        self._close_deadline: float | None = None  # closing; abort if not flushed by then
        self._lost = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None  # the handler of `_running`
        self._running: Request | None = None
        self._pending: collections.deque[Request] = collections.deque()
        self.last_active = self._loop.time()
        self._receiving_since: float | None = None  # a request's first byte, until its last
        self._linger_until: float | None = None  # dropping the rest of a refused body
        # The request being received.
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._request: Request | None = None
        self._body: list[bytes] = []
        self._body_size = 0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.connections.add(self)
        if self.server.draining:
            self.close()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        if self._refused:
            return  # the parser is in its error state; nothing more is read
        head_was_open = self.head_open
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.closing = True  # the request is answered; what follows is not HTTP/1.1
            if self._transport is not None:
                self._transport.pause_reading()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, RouterError):
                self._refuse(cause)
            else:
                log.exception("request parsing failed")
                self._refuse(RouterError("The router failed to read the request."))
        except httptools.HttpParserError as exc:
            self._refuse(BadRequest(f"Malformed HTTP request: {exc}."))
        else:
            # llhttp hands over a header only once it ends, so an endless header line is
            # counted here, as raw bytes of a head that is still open.
            if head_was_open and self.head_open:
                self._raw_head += len(data)
                if self._raw_head > self._limits.max_head_bytes:
                    self._refuse(self._head_too_large())

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.server.connections.discard(self)
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClientGone("client disconnected"))
        running = self._running
        if self._task is not None and running is not None and not running.complete:
            self._task.cancel()  # the handler's upstream request is closed on its way out
        self.server.connection_closed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._head_bytes = 0
        self._request = None
        self._body = []
        self._body_size = 0
        self._receiving_since = self._loop.time()
        self._raw_head = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        seen = self._headers.get(key)
        self._headers[key] = text if seen is None else f"{seen}, {text}"

    def on_headers_complete(self) -> None:
        parser = self._parser
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise BadRequest("Malformed request target.") from None
        http11 = parser.get_http_version() == "1.1"
        request = Request(
            self,
            method=parser.get_method().decode("ascii", "replace"),
            path=(url.path or b"/").decode("latin-1"),
            query_string=(url.query or b"").decode("latin-1"),
            headers=self._headers,
            http11=http11,
            keep_alive=parser.should_keep_alive() and not self.closing,
        )
        self._request = request
        declared = request.content_length
        if declared is not None and declared > self._limits.max_body_bytes:
            self._too_large(request)
        elif (
            self._headers.get("expect", "").lower() == "100-continue"
            and http11
            and self._task is None  # never inside another response on the wire
        ):
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self._request
        if request is None or request.body_too_large:
            return  # dropped
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            self._body = []
            self._too_large(request)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        self._request = None
        self._receiving_since = None
        if request is None:
            return
        if request.body_too_large:  # handed over already; its rest was dropped
            self._linger_until = None
            if self._task is None and not self._pending:
                self.close()
            return
        if self._dropping:
            return  # pipelined behind a body over the limit: not served
        body = self._body
        request.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        self._dispatch(request)

    # -- requests and responses ---------------------------------------------------------

    @property
    def head_open(self) -> bool:
        """A request's head has begun and not ended."""
        return self._receiving_since is not None and self._request is None

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self._limits.max_head_bytes:
            raise self._head_too_large()

    def _head_too_large(self) -> HeadTooLarge:
        return HeadTooLarge(f"Request head exceeds {self._limits.max_head_bytes} bytes.")

    def _too_large(self, request: Request) -> None:
        request.body_too_large = True
        request.keep_alive = False
        self._dropping = True
        self._linger_until = self._loop.time() + _LINGER_SECONDS
        self._dispatch(request)

    def _dispatch(self, request: Request) -> None:
        if self._task is not None:
            self._pending.append(request)
            if self._transport is not None:
                self._transport.pause_reading()  # one request waiting is enough
            return
        self._running = request
        self._task = self._loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        try:
            await self.server.handler(request)
            if not request._started:
                raise RuntimeError(f"handler for {request.path} sent no response")
            if not request.complete:
                await request.end()
            # The answer is taken before the next request is read or run: a client that
            # pipelines without reading cannot pile answers up in memory.
            await self.drain()
        except (asyncio.CancelledError, ClientGone):
            pass  # the client left (or shutdown aborted it): nothing to answer
        except Exception:
            log.exception("request handler failed", extra={"fields": {"path": request.path}})
            if not request._started:
                request.keep_alive = False
                err = RouterError("The router failed to handle the request.")
                with contextlib.suppress(ClientGone):
                    request.respond(
                        err.status,
                        {"content-type": "application/json"},
                        json.dumps(err.body()).encode(),
                    )
            else:
                request.abort()
        finally:
            self._task = None
            self._running = None
            self._next(request)

    def _next(self, done: Request) -> None:
        """After a response: the next request received, else close or read on."""
        if self._lost:
            return
        if self._pending and done.keep_alive:
            request = self._pending.popleft()
            self._running = request
            self._task = self._loop.create_task(self._run(request))
            return
        if self._linger_until is not None:
            # The 413 is out; the rest of its body is still arriving: read and drop it,
            # then close (at its end, or at the linger deadline).
            if self._transport is not None:
                self._transport.resume_reading()
            return
        if not done.keep_alive or self.closing:
            self.close()  # requests pipelined behind a closing response are not served
            return
        self.last_active = self._loop.time()
        if self._transport is not None:
            self._transport.resume_reading()

    def _refuse(self, err: RouterError) -> None:
        """Answer a request that no handler will see, then close; read no more."""
        self.closing = True
        self._refused = True
        if self._transport is not None:
            self._transport.pause_reading()
        if self._task is None and not self._pending:
            self.write(error_response(err, self.date_line()))
            self.close()
        # else: the responses in progress finish first; the connection then closes

    def date_line(self) -> bytes:
        return self.server.date_line()

    def write(self, data: bytes) -> None:
        if self._lost or self._transport is None:
            raise ClientGone("client disconnected")
        self._transport.write(data)

    async def drain(self) -> None:
        """Wait while the client is not taking bytes; one that takes none for
        `client_idle` seconds is disconnected (it would hold an engine slot forever)."""
        if self._lost:
            raise ClientGone("client disconnected")
        if self._write_paused:
            waiter = self._loop.create_future()
            self._drain_waiter = waiter
            try:
                async with asyncio.timeout(self._limits.client_idle):
                    await waiter
            except TimeoutError:
                self.abort()
                raise ClientGone("client stopped reading") from None

    def close(self) -> None:
        """Close once what is written has been sent; abort if the client has not taken it
        within `client_idle` seconds."""
        if self._transport is not None and not self._lost:
            self._transport.close()
            if self._close_deadline is None:
                self._close_deadline = self._loop.time() + self._limits.client_idle

    def abort(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()

    @property
    def idle(self) -> bool:
        """Between requests: nothing running, waiting or being received."""
        return self._task is None and not self._pending and self._receiving_since is None

    def sweep(self, now: float) -> None:
        """Close the connection if it idled or sent too slowly for too long."""
        if self._close_deadline is not None:
            if now > self._close_deadline:
                self.abort()  # closed, but the client never took the rest
            return
        if self._task is not None:
            return  # a response is in progress: its own timeouts apply
        if self._linger_until is not None and now > self._linger_until:
            self.close()
        elif self._receiving_since is not None:
            if now - self._receiving_since > self._limits.client_request:
                self._refuse(RequestTimeout("The request was not received in time."))
        elif now - self.last_active > self._limits.client_idle:
            self.close()


class HttpServer:
    """Serves `handler` on host:port until `shutdown()`."""

    def __init__(self, handler: Handler, limits: ServerLimits) -> None:
        self.handler = handler
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._all_closed = asyncio.Event()
        self._date = (0, b"")

    async def start(self, host: str, port: int, backlog: int = 1024) -> int:
        """Listen; returns the port (useful with port 0)."""
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, backlog=backlog, reuse_address=True
        )
        self._sweeper = self.loop.create_task(self._sweep())
        sockets: Any = self._server.sockets
        return int(sockets[0].getsockname()[1])

    def date_line(self) -> bytes:
        """The Date header (HTTP/1.1 wants one), formatted at most once a second."""
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, b"date: %b\r\n" % formatdate(now, usegmt=True).encode())
        return self._date[1]

    def connection_closed(self) -> None:
        if not self.connections:
            self._all_closed.set()

    def stop_listening(self) -> None:
        """No new connections; idle keep-alive connections close, busy ones close after
        their response in progress."""
        self.draining = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn.closing = True
            if conn.idle:
                conn.close()

    async def shutdown(self, grace: float) -> None:
        """Stop listening, give requests in progress up to `grace` seconds, abort the rest."""
        self.stop_listening()
        if self.connections:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.sweep(now)
