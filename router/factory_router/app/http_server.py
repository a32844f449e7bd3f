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
  malformed request 400, both in OpenAI's error shape, and the connection closes; beyond
  what llhttp refuses, so does `http_message.framing_error` (stricter than uvicorn, as
  tests/unit/router/test_http_conformance.py shows case by case);
- `check_head` may refuse a request on its head alone (the router: a POST to the API
  without a valid key): the refusal is answered before any 100 Continue and before the
  body, which is read and dropped, never buffered, and the connection closes;
- at most `max_connections` client connections at once: one over the cap is closed as it
  is accepted (the ones open are unaffected), so idle connections cannot exhaust file
  descriptors;
- a connection idle between requests for `client_idle` seconds, or a request not
  received whole within `client_request` seconds of its first byte, is closed;
- a response is written whole (one write) or streamed (chunked, or sized by its
  Content-Length), with write back-pressure; a client that takes no bytes for
  `client_idle` seconds is disconnected, a closing connection included;
- a client that disconnects before its response is complete cancels the handler, which
  is how an abandoned stream closes its upstream request;
- shutdown: stop listening, close idle connections, let the requests in progress finish
  within a grace period, then abort what is left.

Memory: a body is buffered up to `max_body_bytes` (one piece kept as it is, several grown
in one bytearray), and whatever a connection holds is dropped when it is lost. The parser
holds the connection's bound methods, a reference cycle that only the cyclic collector
would otherwise break, rarely; bodies abandoned midway stayed in memory with it (50
connections sending 4 MiB: +190 MB per run, never returned).

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

from factory_router.app.http_message import ClientGone, Request, error_response, framing_error
from factory_router.policy.config import Limits
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
    max_connections: int = Limits.max_client_connections  # client connections open at once


Handler = Callable[[Request], Awaitable[None]]
# Looks at a request's head (its body not read yet): an error refuses it there.
HeadCheck = Callable[[Request], RouterError | None]


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and runs their handlers one at a time."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self._loop = server.loop
        self._limits = server.limits
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
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
        self._pending: collections.deque[tuple[Request, RouterError | None]] = collections.deque()
        self.last_active = self._loop.time()
        self._receiving_since: float | None = None  # a request's first byte, until its last
        self._linger_until: float | None = None  # dropping the rest of a refused body
        # The request being received.
        self._url: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._repeated: dict[str, list[str]] = {}  # values of a header seen more than once
        self._head_bytes = 0
        self._request: Request | None = None
        self._body: bytes | bytearray = b""
        self._early = False  # handed over before its body (413, refused head): body dropped

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        server = self.server
        if len(server.connections) >= self._limits.max_connections:
            server.refused_connections += 1
            self._refused = True
            self._transport.close()  # before a byte is read: nothing is held for it
            return
        server.connections.add(self)
        if server.draining:
            self.close()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        parser = self._parser
        if self._refused or parser is None:
            return  # the parser is in its error state; nothing more is read
        head_was_open = self.head_open
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.closing = True  # the request is answered; what follows is not HTTP/1.1
            if self._transport is not None:
                self._transport.pause_reading()
        except httptools.HttpParserCallbackError as exc:
            self._refuse(_callback_error(exc))  # (no local keeps it: see _detached)
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
        # Nothing outlives the connection: not the parser (it holds this protocol's bound
        # methods, a cycle), not a body half received, not the requests waiting their turn.
        self._parser = None
        self._pending.clear()
        self._request = None
        self._body = b""
        self._url, self._headers, self._repeated = [], {}, {}
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
        self._url = []
        self._headers = {}
        self._repeated = {}
        self._head_bytes = 0
        self._request = None
        self._body = b""
        self._early = False
        self._receiving_since = self._loop.time()
        self._raw_head = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        seen = self._headers.get(key)
        if seen is None:
            self._headers[key] = text
        else:  # joined once, at the head's end: a header repeated n times costs O(n)
            self._repeated.setdefault(key, [seen]).append(text)

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser is None:  # never: callbacks come from inside feed_data
            return
        try:
            url = httptools.parse_url(b"".join(self._url))
        except httptools.HttpParserInvalidURLError:
            raise BadRequest("Malformed request target.") from None
        headers = self._headers
        for key, values in self._repeated.items():
            headers[key] = ", ".join(values)
        version = parser.get_http_version()
        refusal = framing_error(version, headers, self._repeated)
        if refusal is not None:
            raise BadRequest(refusal)
        http11 = version == "1.1"
        request = Request(
            self,
            method=parser.get_method().decode("ascii", "replace"),
            path=(url.path or b"/").decode("latin-1"),
            query_string=(url.query or b"").decode("latin-1"),
            headers=headers,
            http11=http11,
            keep_alive=parser.should_keep_alive() and not self.closing,
        )
        self._request = request
        if self._dropping:  # behind a refused request: never served, its body not kept
            self._early = True
            return
        check = self.server.check_head
        refused = check(request) if check is not None else None
        declared = request.content_length
        if refused is not None:
            self._hand_over_early(request, _detached(refused))
        elif declared is not None and declared > self._limits.max_body_bytes:
            self._too_large(request)
        elif (
            self._headers.get("expect", "").lower() == "100-continue"
            and http11
            and self._task is None  # never inside another response on the wire
        ):
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        request = self._request
        if request is None or self._early:
            return  # dropped
        buffered = self._body
        if len(buffered) + len(body) > self._limits.max_body_bytes:
            self._body = b""
            self._too_large(request)
        elif not buffered:
            self._body = body  # the usual case, a body in one piece: kept, not copied
        elif isinstance(buffered, bytearray):
            buffered += body  # amortised growth; a list of pieces costs ~40 bytes a piece
        else:
            self._body = bytearray(buffered) + body

    def on_message_complete(self) -> None:
        request = self._request
        self._request = None
        self._receiving_since = None
        if request is None:
            return
        if self._early:  # handed over already; its body was dropped
            self._linger_until = None
            if self._task is None and not self._pending:
                self.close()
            return
        if self._dropping:
            return  # pipelined behind a refused request: not served
        body, self._body = self._body, b""
        request.body = body if isinstance(body, bytes) else bytes(body)
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
        self._hand_over_early(request, None)

    def _hand_over_early(self, request: Request, refusal: RouterError | None) -> None:
        """Answer a request before its body: to the handler flagged `body_too_large`, or
        with `refusal`. The body is read and dropped; nothing after it is served."""
        request.keep_alive = False
        self._early = True
        self._dropping = True
        self._linger_until = self._loop.time() + _LINGER_SECONDS
        self._dispatch(request, refusal)

    def _dispatch(self, request: Request, refusal: RouterError | None = None) -> None:
        if self._task is not None:
            self._pending.append((request, refusal))
            if self._transport is not None:
                self._transport.pause_reading()  # one request waiting is enough
            return
        self._running = request
        self._task = self._loop.create_task(self._run(request, refusal))

    async def _run(self, request: Request, refusal: RouterError | None) -> None:
        try:
            if refusal is not None:
                _respond_error(request, refusal)
            else:
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
                    _respond_error(request, err)
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
            request, refusal = self._pending.popleft()
            self._running = request
            self._task = self._loop.create_task(self._run(request, refusal))
            return
        if self._linger_until is not None:
            # The 413 (or refusal) is out; the rest of its body is still arriving: drop it,
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


def _detached(err: RouterError) -> RouterError:
    """`err` without its traceback and chained exceptions, to be answered. Its traceback
    holds the frames it came through, and so the connection, which holds `err`: a cycle
    that would keep a connection (and what it holds) until the cyclic collector runs."""
    err.__traceback__ = None
    err.__context__ = err.__cause__ = None
    return err


def _callback_error(exc: httptools.HttpParserCallbackError) -> RouterError:
    """The answer to an exception raised in a parser callback: a RouterError as it is;
    anything else is a bug, logged, and a 500."""
    cause = exc.__context__ or exc.__cause__
    if isinstance(cause, RouterError):
        return _detached(cause)
    log.exception("request parsing failed")
    return RouterError("The router failed to read the request.")


def _respond_error(request: Request, err: RouterError) -> None:
    body = json.dumps(err.body()).encode()
    request.respond(err.status, {"content-type": "application/json"}, body)


class HttpServer:
    """Serves `handler` on host:port until `shutdown()`; `check_head`, if given, sees each
    request's head first and may refuse it there (its body is then never buffered)."""

    def __init__(
        self, handler: Handler, limits: ServerLimits, check_head: HeadCheck | None = None
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.check_head = check_head
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self.refused_connections = 0  # closed as accepted: over `max_connections`
        self._refusals_logged = 0
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
            refused = self.refused_connections - self._refusals_logged
            if refused:  # one line a sweep, however many
                self._refusals_logged = self.refused_connections
                cap = self.limits.max_connections
                log.warning("%d connection(s) refused: %d open already, the cap", refused, cap)
