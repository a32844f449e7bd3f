"""The upstream client: one attempt against one backend, over aiohttp's HTTP/1.1 client.

`UpstreamClient.open()` makes one attempt against one backend and returns once the first
body byte has arrived (or the response is a complete, non-retryable answer). Until then
nothing has reached the client, so any failure is an `AttemptFailed` that the caller may
fail over from; after it, the caller relays the rest chunk by chunk with
`Response.read()`, which raises:

    TimeoutError        no byte for Timeouts.idle (a stalled stream)
    ConnectionBroken    the connection ended before the body did
    ProtocolViolation   the body was not valid HTTP/1.1 framing

    AttemptFailed(kind=...)   kind is one of:
      pool         no free connection slot to this backend within Timeouts.pool_acquire:
                   the router's own limit, never held against the backend
      connect      could not connect / connection reset before the first byte
      timeout      no first byte within Timeouts.first_byte (a stalled engine)
      status       5xx, 429, 404, 401 or 403 from the engine (retryable; a 404 means the
                   address no longer holds an engine of this model: a stale endpoint whose
                   address now belongs to another pod; 401/403 mean the backend refused
                   the router, e.g. a region's router without this router's endpoint key:
                   the client's own key was accepted here, so it must not see a 401)
      redirect     3xx from the engine: never followed (it could point anywhere)
      protocol     anything else that broke before the first byte: a malformed or
                   oversized head, conflicting framing (Content-Length with
                   Transfer-Encoding, a transfer coding other than plain `chunked`)

Why aiohttp's client: it is maintained and fuzzed by others, it was the fastest maintained
client measured in bench/router_overhead/stack_compare.py, and it is already a dependency.
`reuse_guard` closes the two gaps it leaves in connection reuse (a byte that arrives when
none is due never reaches another request). Connection slots are the router's own
gates (`upstream.gate`), so that waiting for a slot is told apart from an engine that
does not answer.

A reused keep-alive connection that turns out to be closed before any response byte (the
engine closed it while idle) is retried once on a new connection to the same backend;
that is not a failure of the backend. Redirects are never followed, cookies never kept,
bodies never decompressed (they are relayed as they came); every timeout and limit comes
from `policy.config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from factory_router.policy.config import Limits, Timeouts
from factory_router.policy.fleet import Backend
from factory_router.upstream.gate import Gate
from factory_router.upstream.reuse_guard import GuardedConnector, exchange_on_reused_connection

RETRYABLE_STATUS = frozenset({401, 403, 404, 429, 500, 502, 503, 504})
# aiohttp adds these unless told not to; an engine gets only what the proxy forwards.
_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
_MAX_CACHED = 4096  # URLs and per-origin slots kept; backends come and go


class ConnectionBroken(Exception):
    """The connection failed or closed before the response was complete."""


class ProtocolViolation(Exception):
    """The engine's answer was not valid, unambiguous HTTP/1.1."""


class AttemptFailed(Exception):
    def __init__(self, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status


def _framing_problem(headers: Mapping[str, str]) -> str | None:
    """Framing the router refuses although a lenient parser might accept it: the body's
    end would be ambiguous, or (`chunked, gzip`) only the connection's close would end it."""
    coding = headers.get("Transfer-Encoding")
    if coding is None:
        return None
    if "Content-Length" in headers:
        return "Content-Length together with Transfer-Encoding"
    if coding.strip().lower() != "chunked":
        return f"unsupported Transfer-Encoding {coding[:40]!r}"
    return None


class Response:
    """One upstream response: status and headers are known; the body comes from `read()`."""

    __slots__ = ("_done", "_raw", "_slot", "content_length", "content_type", "headers", "status")

    def __init__(self, raw: aiohttp.ClientResponse, slot: _Slot) -> None:
        self._raw = raw
        self._slot: _Slot | None = slot
        self._done = False
        self.status = raw.status
        self.headers: Mapping[str, str] = raw.headers  # case-insensitive
        length = raw.headers.get("Content-Length")
        chunked = "Transfer-Encoding" in raw.headers
        self.content_length = int(length) if length and length.isdigit() and not chunked else None
        kind = raw.headers.get("Content-Type", "")
        self.content_type = kind.partition(";")[0].strip().lower()  # "" when absent

    async def read(self) -> bytes:
        """The next body bytes as they arrived; b"" once the body is complete."""
        try:
            data = await self._raw.content.readany()
        except aiohttp.ClientPayloadError as exc:
            raise ProtocolViolation(str(exc)[:200]) from None
        except aiohttp.ServerTimeoutError:
            raise TimeoutError from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientError, OSError) as exc:
            raise ConnectionBroken(type(exc).__name__) from None
        except RuntimeError as exc:  # aiohttp: "Connection closed." once its connection is gone
            raise ConnectionBroken(str(exc)[:100]) from None
        if not data:
            self._done = True
        return data

    def release(self) -> None:
        """Done with this response. A body read to its end may let the connection be
        pooled (`reuse_guard` decides); any other closes it, and the engine sees the
        disconnect and aborts the generation."""
        if self._done:
            self._raw.release()
        else:
            self._raw.close()
        if self._slot is not None:
            self._slot.release()
            self._slot = None


class _Slot:
    """One connection slot: one of the whole pool's and one of the backend's."""

    __slots__ = ("_origin", "_total")

    def __init__(self, total: Gate, origin: Gate) -> None:
        self._total, self._origin = total, origin

    def release(self) -> None:
        self._origin.release()
        self._total.release()


@dataclass
class Opened:
    """A response whose headers and first body bytes have arrived."""

    response: Response
    first_chunk: bytes
    ttfb_s: float  # from the call of open(), the wait for a connection slot included
    sent_at: float  # time.perf_counter() when open() was called
    pool_wait_s: float = 0.0  # of ttfb_s, waiting for the router's own connection slot

    @property
    def streamed(self) -> bool:
        return self.response.content_type == "text/event-stream"

    @property
    def status(self) -> int:
        return self.response.status

    def close(self) -> None:
        self.response.release()


class UpstreamClient:
    def __init__(
        self, timeouts: Timeouts, limits: Limits, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.timeouts = timeouts
        self.limits = limits
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None
        self._connector: GuardedConnector | None = None
        self._total = Gate(limits.max_connections)
        self._per_origin: dict[str, Gate] = {}
        self._urls: dict[tuple[str, str], tuple[URL, str]] = {}  # and its origin

    async def start(self) -> None:
        if self._session is not None:
            return
        limits, timeouts = self.limits, self.timeouts
        self._connector = GuardedConnector(
            limit=limits.max_connections,
            limit_per_host=limits.max_connections_per_host,
            keepalive_timeout=limits.keepalive_expiry,
            ssl=self._ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            # No total: a long stream is legitimate. The first byte is bounded by
            # open()'s own deadline, each later gap by sock_read.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=timeouts.connect, sock_read=timeouts.idle
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,
            max_line_size=limits.max_upstream_line_bytes,
            max_field_size=limits.max_upstream_line_bytes,
            max_headers=limits.max_upstream_headers,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._connector = None

    @property
    def connections(self) -> int:
        """Upstream connections open now (idle ones included)."""
        return self._connector.open_connections if self._connector is not None else 0

    def _url(self, base: str, path: str) -> tuple[URL, str]:
        """The URL of `path` on `base`, and its origin (the key of its connection slots)."""
        key = (base, path)
        found = self._urls.get(key)
        if found is None:
            if len(self._urls) >= _MAX_CACHED:
                self._urls.clear()
            url = URL(base.rstrip("/") + path)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError("not an http(s) URL")
            found = self._urls[key] = (url, f"{url.scheme}://{url.host}:{url.port}")
        return found

    async def _slot(self, origin: str) -> tuple[_Slot, float]:
        """A connection slot for `origin`, waiting at most Timeouts.pool_acquire; and the
        seconds waited."""
        started = time.perf_counter()
        per = self._per_origin.get(origin)
        if per is None:
            if len(self._per_origin) >= _MAX_CACHED:  # forget origins with nothing in use
                for key, gate in list(self._per_origin.items()):
                    if gate.idle:
                        del self._per_origin[key]
            per = self._per_origin[origin] = Gate(self.limits.max_connections_per_host)
        if per.try_take():
            if self._total.try_take():  # free slots: taken at once, no timer to arm
                return _Slot(self._total, per), 0.0
            per.release()
        try:
            async with asyncio.timeout(self.timeouts.pool_acquire):
                await per.take()
                try:
                    await self._total.take()
                except BaseException:
                    per.release()
                    raise
        except TimeoutError:
            raise AttemptFailed(
                "pool", f"no free connection within {self.timeouts.pool_acquire:g}s"
            ) from None
        return _Slot(self._total, per), time.perf_counter() - started

    async def _exchange(
        self, backend: Backend, method: str, path: str, body: bytes | None,
        headers: Mapping[str, str],
    ) -> tuple[Response, float]:  # fmt: skip
        """Send the request; the response once its status and headers have arrived, and the
        seconds spent waiting for a connection slot."""
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        try:
            url, origin = self._url(backend.url, path)
        except ValueError:
            raise ConnectionBroken(f"invalid backend URL {backend.url[:100]!r}") from None
        # A header value with CR or LF cannot come from a parsed request; the client does
        # not rely on that (aiohttp would refuse the whole request).
        safe = {k: v for k, v in headers.items() if "\r" not in v and "\n" not in v}
        slot, waited = await self._slot(origin)
        try:
            for _ in range(2):
                exchange_on_reused_connection.set(False)
                try:
                    raw = await self._session.request(
                        method, url, data=body, headers=safe, allow_redirects=False
                    )
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError):
                    if exchange_on_reused_connection.get():
                        continue  # the engine closed it while idle: once more, afresh
                    raise ConnectionBroken("closed before answering") from None
                problem = _framing_problem(raw.headers)
                if problem is not None:
                    raw.close()
                    raise ProtocolViolation(problem)
                return Response(raw, slot), waited
            raise ConnectionBroken("a new connection closed before answering")
        except BaseException:
            slot.release()
            raise

    async def open(
        self,
        backend: Backend,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> Opened:
        started = time.perf_counter()
        response: Response | None = None
        try:
            async with asyncio.timeout(self.timeouts.first_byte):
                response, waited = await self._exchange(backend, method, path, body, headers)
                status = response.status
                if status < 200:  # 101: an upgrade nobody asked for; other 1xx never end here
                    raise AttemptFailed("protocol", f"engine answered {status}", status)
                if 300 <= status < 400:
                    raise AttemptFailed("redirect", f"engine answered {status}", status)
                if status in RETRYABLE_STATUS:
                    raise AttemptFailed("status", f"engine answered {status}", status)
                first = await response.read()
        except AttemptFailed:
            if response is not None:
                response.release()
            raise
        except aiohttp.ConnectionTimeoutError:  # TCP connect (sock_connect), not the engine
            raise AttemptFailed("connect", "connect timeout") from None
        except TimeoutError:
            if response is not None:
                response.release()
            raise AttemptFailed(
                "timeout", f"no first byte within {self.timeouts.first_byte:g}s"
            ) from None
        except (ConnectionBroken, aiohttp.ClientConnectionError, OSError) as exc:
            if response is not None:
                response.release()
            raise AttemptFailed("connect", type(exc).__name__) from None
        except (ProtocolViolation, aiohttp.ClientError) as exc:
            if response is not None:
                response.release()
            raise AttemptFailed("protocol", str(exc)[:200]) from None
        except BaseException:  # cancelled: the client went away
            if response is not None:
                response.release()
            raise
        return Opened(response, first, time.perf_counter() - started, started, waited)

    async def probe(self, backend: Backend, headers: Mapping[str, str]) -> float | None:
        """`GET /health` on the backend: seconds to a 2xx answer, None on any failure.
        An RTT sample (the engine answers at once); probes never eject or retry."""
        started = time.perf_counter()
        response: Response | None = None
        try:
            async with asyncio.timeout(self.timeouts.probe):
                response, _ = await self._exchange(backend, "GET", "/health", None, headers)
                while await response.read():
                    pass
                ok = 200 <= response.status < 300
        except (
            TimeoutError, AttemptFailed, ConnectionBroken, ProtocolViolation,
            aiohttp.ClientError, OSError, RuntimeError,
        ):  # fmt: skip
            return None
        finally:
            if response is not None:
                with contextlib.suppress(Exception):
                    response.release()
        return time.perf_counter() - started if ok else None
