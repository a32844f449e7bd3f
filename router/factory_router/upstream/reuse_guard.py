"""Connection reuse that no upstream can turn into a cross-tenant leak.

The upstream hop is aiohttp's client (`upstream.client`). aiohttp already refuses to pool a
connection whose response left a complete second message or a parse error behind, but two
cases reach its pool (checked against aiohttp 3.14.5 in
tests/unit/router/test_upstream_isolation.py, which fails if this guard is removed):

- bytes that arrive while the connection sits idle in the pool (an *unsolicited*
  response): aiohttp parses and queues them, and the next request on that connection,
  perhaps another tenant's, receives them as its answer;
- the start of another message in the same read as the end of the response: it stays in
  the parser and the connection is pooled.

So a connection is pooled again only when its exchange was provably clean:

1. exactly one response message, no interim (1xx) answer before it, and no parse error;
   a second message parsed in the same read as the end of the first closes the
   connection at once (aiohttp may have pooled it mid-parse, as the body ended);
2. its head ends at the first CRLF CRLF and every LF of it is preceded by CR (so the end
   counted here is the end the parser saw);
3. framed by `Content-Length` (or a status without a body): the bytes received on the
   connection during the exchange add up exactly to the head plus `Content-Length`;
   framed by `Transfer-Encoding: chunked`: the last bytes received are the last-chunk
   `CRLF 0 CRLF CRLF` (no trailers, no extensions), ending in the read that completed
   the message; anything after it in that read would be a second message's status line
   and head, which the parser either reports (two messages) or fails on;
4. no byte arrives after the message is complete. A byte that arrives then, or while the
   connection is idle in the pool, closes the connection at once, so aiohttp's pool (which
   checks `is_connected()` before reuse) never hands it out. And as a pooled connection is
   taken for the next request, anything queued on it, or its socket polled readable (a
   byte or a close the event loop has not delivered yet), closes it too, and the client
   retries the request on a new connection.

Close-delimited answers, and anything else, are never pooled; nor is any TLS connection
(https upstreams, e.g. a region's router behind its `spec.endpoint`): asyncio's TLS layer
holds undecrypted or unread records where this guard cannot see them, so a stray answer
could wait there for the next request. Each https request pays a new TCP and TLS
handshake instead, until the guard can see through the TLS layer.
"""

from __future__ import annotations

import asyncio
import contextvars
import select
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

# Set when an exchange starts (in the task that makes the request): whether it runs on a
# connection that carried an exchange before. The client retries a request whose pooled
# connection turned out closed, but never one on a fresh connection.
exchange_on_reused_connection: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "exchange_on_reused_connection", default=False
)

_HEAD_END = b"\r\n\r\n"
_LAST_CHUNK = b"\r\n0\r\n\r\n"
_MAX_HEAD_SCAN = 128 * 1024  # a head longer than this is never pooled (aiohttp caps it first)
_NO_BODY = frozenset({204, 304})


class GuardedResponseHandler(ResponseHandler):
    """aiohttp's protocol, counting each exchange's bytes and closing on any stray byte."""

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: GuardedConnector) -> None:
        super().__init__(loop=loop)
        self._owner = owner
        self._tls = False
        self._counted = False
        self._exchanges = 0
        self._in_exchange = False  # between set_response_params and the message's end
        self._complete = False  # the exchange's message has been received whole
        self._stray = False  # a byte arrived when none was due
        self._received = 0
        self._head = bytearray()
        self._head_length: int | None = None
        self._messages = 0
        self._expected_body: int | None = None
        self._chunked = False
        self._interim = False  # an interim (1xx) answer came first
        self._last = b""  # the last bytes received in this exchange
        self._poller: select.poll | None = None  # the socket, for bytes not yet delivered
        self._read_deadline = 0.0  # sock_read: the loop time by which a byte is due

    # -- lifecycle ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # Over TLS the bytes this guard counts are plaintext, after asyncio's TLS layer,
        # which takes stray records off the socket and holds them (a partial record, or
        # reading paused) where neither the count nor the socket poll can see them.
        self._tls = transport.get_extra_info("sslcontext") is not None
        self._counted = True
        self._owner.open_connections += 1

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._owner.open_connections -= 1

    def close(self) -> None:
        self._uncount()  # counted as gone when closed, not a loop turn later
        super().close()

    def abort(self) -> None:
        self._uncount()
        super().abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._uncount()
        super().connection_lost(exc)

    def set_response_params(self, **kwargs: Any) -> None:
        """aiohttp calls this before it writes each request: a new exchange starts."""
        reused = self._exchanges > 0
        exchange_on_reused_connection.set(reused)
        self._exchanges += 1
        self._in_exchange, self._complete, self._stray = True, False, False
        self._received, self._messages, self._expected_body = 0, 0, None
        self._interim, self._chunked, self._last = False, False, b""
        self._head.clear()
        self._head_length = None
        if reused and (self._buffer or self._tail or self._input_pending()):
            # Something arrived in the pool: parsed and queued already, or not yet handed
            # over by the loop. Never let it be this request's answer: writing the request
            # now fails, and the client retries it on a new connection.
            self._drop(forget_queue=True)
        super().set_response_params(**kwargs)

    def _drop(self, *, forget_queue: bool) -> None:
        """Never again: nothing more is parsed here, and the connection is closed (so the
        pool never hands it out). Taken for a new request (`forget_queue`), what is queued
        or held for parsing is forgotten too: closing alone would not keep a queued answer
        from being read as the new request's; that request fails over to a new connection.
        Otherwise the exchange in progress may still read its own answer, queued first."""
        self._stray = True
        self.force_close()
        self.close()
        if forget_queue:
            self._buffer.clear()
            self._tail = b""
            # (after close(), which forgets an exception) the request reads this, not EOF
            self.set_exception(aiohttp.ServerDisconnectedError("dropped by the reuse guard"))

    def _input_pending(self) -> bool:
        poller = self._poller
        if poller is None:  # registered once per connection; polled at each reuse
            transport = self.transport
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None:
                return False
            poller = self._poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))

    # -- sock_read, re-armed lazily -------------------------------------------------------

    def _reschedule_timeout(self) -> None:
        """aiohttp's sock_read timeout restarts on every read from the socket: a timer
        cancelled and armed again per chunk of a stream. Here the deadline moves instead,
        and the one timer, when it fires early, is armed again for what is left; it fires
        as aiohttp's would, `read_timeout` seconds after the last byte."""
        timeout = self._read_timeout
        if not timeout:
            super()._reschedule_timeout()  # none: any timer is dropped
            return
        deadline = self._read_deadline = self._loop.time() + timeout
        handle = self._read_timeout_handle
        if handle is None or handle.when() > deadline:  # (a shorter timeout than armed)
            if handle is not None:
                handle.cancel()
            self._read_timeout_handle = self._loop.call_at(deadline, self._on_read_timeout)

    def _on_read_timeout(self) -> None:
        if self._loop.time() < self._read_deadline:  # bytes came since it was armed
            self._read_timeout_handle = self._loop.call_at(
                self._read_deadline, self._on_read_timeout
            )
            return
        self._read_timeout_handle = None
        super()._on_read_timeout()

    # -- bytes in -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._stray:  # dropped: nothing more is parsed on this connection
            return
        if data:  # b"" is aiohttp resuming its own parsing of what it already holds
            if not self._in_exchange or self._complete:
                # Idle in the pool, or after the whole answer: nothing is due. These
                # bytes must never be parsed into an answer for a later request.
                self._drop(forget_queue=False)
                return
            self._received += len(data)
            self._last = (self._last + data[-len(_LAST_CHUNK) :])[-len(_LAST_CHUNK) :]
            if self._head_length is None and len(self._head) < _MAX_HEAD_SCAN:
                self._head += data[: _MAX_HEAD_SCAN - len(self._head)]
                end = self._head.find(_HEAD_END)
                if end >= 0:
                    self._head_length = end + len(_HEAD_END)
        super().data_received(data)
        if self._note_completion() and self._messages != 1:
            # A second answer in the same read as the end of this one. aiohttp may have
            # pooled the connection already, mid-parse, as the body ended (the pool is only
            # used once this call returns): close it, with the second answer queued on it.
            self._drop(forget_queue=False)

    def _note_completion(self) -> bool:
        """Whether the exchange's message has been received whole (remembered: from then
        on every byte is stray). aiohttp may ask `should_close` from inside the parser, as
        the body ends, before `data_received` returns: so it is asked here too."""
        if not self._complete and self._messages:  # final answers (1xx are not counted)
            payload = self._payload
            self._complete = payload is None or payload.is_eof()
        return self._complete

    def feed_data(self, data: Any, size: int = 0) -> None:
        """One parsed message (aiohttp's DataQueue of (message, payload))."""
        message = data[0]
        if 100 <= message.code < 200 and message.code != 101:
            # An interim answer (100 Continue, 103 Early Hints): aiohttp skips it and waits
            # for the final one. Not the exchange's answer, and such an exchange is not
            # counted byte for byte: its connection is not pooled.
            self._interim = True
            super().feed_data(data, size)
            return
        self._messages += 1
        headers = message.headers
        if "Transfer-Encoding" in headers:
            self._expected_body = None
            coding = headers["Transfer-Encoding"].strip().lower()
            self._chunked = coding == "chunked" and "Content-Length" not in headers
        elif message.code in _NO_BODY:
            self._expected_body = 0
        else:
            length = headers.get("Content-Length", "")
            self._expected_body = int(length) if length.isdigit() else None
        super().feed_data(data, size)

    # -- the decision ---------------------------------------------------------------------

    @property
    def should_close(self) -> bool:
        return super().should_close or not self._clean_exchange()

    def _clean_exchange(self) -> bool:
        if self._tls:  # never pooled: see connection_made
            return False
        if self._stray or self._interim or not self._note_completion() or self._messages != 1:
            return False
        if self._head_length is None:
            return False
        head = bytes(self._head[: self._head_length])
        if head.count(b"\n") != head.count(b"\r\n"):  # a bare LF: the parser's end may differ
            return False
        if self._chunked:
            return self._last == _LAST_CHUNK
        if self._expected_body is None:
            return False
        return self._received == self._head_length + self._expected_body


class GuardedConnector(aiohttp.TCPConnector):
    """aiohttp's TCP connector with `GuardedResponseHandler` connections, and a count of
    the connections open now (idle ones included)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.open_connections = 0
        loop = self._loop
        self._factory = lambda: GuardedResponseHandler(loop, self)  # type: ignore[assignment]
