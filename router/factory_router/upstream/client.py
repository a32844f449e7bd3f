"""The upstream client: one attempt against one backend, over `upstream.http1`.

`UpstreamClient.open()` makes one attempt against one backend and returns once the first
body byte has arrived (or the response is a complete, non-retryable answer). Until then
nothing has reached the client, so any failure is an `AttemptFailed` that the caller may
fail over from; after it, the caller relays the rest chunk by chunk.

    AttemptFailed(kind=...)   kind is one of:
      connect      could not connect / connection reset before the first byte
      timeout      no first byte within Timeouts.first_byte (a stalled engine)
      status       5xx, 429, 404, 401 or 403 from the engine (retryable; a 404 means the
                   address no longer holds an engine of this model: a stale endpoint whose
                   address now belongs to another pod; 401/403 mean the backend refused
                   the router, e.g. a region's router without this router's endpoint key:
                   the client's own key was accepted here, so it must not see a 401)
      redirect     3xx from the engine: never followed (it could point anywhere)
      protocol     anything else that broke before the first byte

A reused keep-alive connection that turns out to be closed before any response byte (the
engine closed it while idle) is retried once on a new connection to the same backend;
that is not a failure of the backend. Redirects are never followed; the router's timeouts
and connection limits all come from `policy.config`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from factory_router.policy.config import Limits, Timeouts
from factory_router.policy.fleet import Backend
from factory_router.upstream.http1 import (
    ConnectionBroken,
    ConnectionPool,
    Origin,
    ProtocolViolation,
    Response,
    request_head,
)

RETRYABLE_STATUS = frozenset({401, 403, 404, 429, 500, 502, 503, 504})


class AttemptFailed(Exception):
    def __init__(self, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status


@dataclass
class Opened:
    """A response whose headers and first body bytes have arrived."""

    response: Response
    first_chunk: bytes
    ttfb_s: float
    sent_at: float  # time.perf_counter() when the request was sent

    @property
    def streamed(self) -> bool:
        return self.response.content_type == "text/event-stream"

    @property
    def status(self) -> int:
        return self.response.status

    def close(self) -> None:
        """Done: a fully read response pools its connection; otherwise the connection is
        dropped and the engine sees the disconnect and aborts the request."""
        self.response.release()


class UpstreamClient:
    def __init__(self, timeouts: Timeouts, limits: Limits) -> None:
        self.timeouts = timeouts
        self.limits = limits
        self._pool: ConnectionPool | None = None
        self._origins: dict[str, Origin] = {}

    async def start(self) -> None:
        if self._pool is None:
            self._pool = ConnectionPool(
                max_connections=self.limits.max_connections,
                max_per_origin=self.limits.max_connections_per_host,
                keepalive_expiry=self.limits.keepalive_expiry,
                connect_timeout=self.timeouts.connect,
                acquire_timeout=self.timeouts.pool_acquire,
            )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def connections(self) -> int:
        """Upstream connections open now (idle ones included)."""
        return self._pool.connections if self._pool is not None else 0

    def _origin(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            if len(self._origins) > 4096:  # backends come and go; keep the cache bounded
                self._origins.clear()
            origin = self._origins[url] = Origin.parse(url)
        return origin

    async def _exchange(
        self, backend: Backend, method: str, path: str, body: bytes | None,
        headers: Mapping[str, str],
    ) -> Response:  # fmt: skip
        """Send the request; the response once its status and headers have arrived."""
        if self._pool is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        try:
            origin = self._origin(backend.url)
        except ValueError:
            raise ConnectionBroken(f"invalid backend URL {backend.url[:100]!r}") from None
        head = request_head(method, origin, path, headers, None if body is None else len(body))
        data = head + body if body else head
        for _ in range(2):
            conn = await self._pool.acquire(origin)
            reused = conn.reused
            try:
                return await conn.begin(data)
            except ConnectionBroken:
                conn.finish()
                if not reused:
                    raise
            except BaseException:
                conn.finish()
                raise
        raise ConnectionBroken("a new connection closed before answering")

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
                response = await self._exchange(backend, method, path, body, headers)
                status = response.status
                if 300 <= status < 400:
                    raise AttemptFailed("redirect", f"engine answered {status}", status)
                if status in RETRYABLE_STATUS:
                    raise AttemptFailed("status", f"engine answered {status}", status)
                first = await response.read(self.timeouts.first_byte)
        except AttemptFailed:
            if response is not None:
                response.release()
            raise
        except TimeoutError:
            if response is not None:
                response.release()
            raise AttemptFailed(
                "timeout", f"no first byte within {self.timeouts.first_byte:g}s"
            ) from None
        except (ConnectionBroken, OSError) as exc:
            if response is not None:
                response.release()
            raise AttemptFailed("connect", type(exc).__name__) from None
        except ProtocolViolation as exc:
            if response is not None:
                response.release()
            raise AttemptFailed("protocol", str(exc)[:200]) from None
        except BaseException:  # cancelled: the client went away
            if response is not None:
                response.release()
            raise
        return Opened(response, first, time.perf_counter() - started, started)

    async def probe(self, backend: Backend, headers: Mapping[str, str]) -> float | None:
        """`GET /health` on the backend: seconds to a 2xx answer, None on any failure.
        An RTT sample (the engine answers at once); probes never eject or retry."""
        started = time.perf_counter()
        response: Response | None = None
        try:
            async with asyncio.timeout(self.timeouts.probe):
                response = await self._exchange(backend, "GET", "/health", None, headers)
                while await response.read(self.timeouts.probe):
                    pass
                ok = 200 <= response.status < 300
        except (TimeoutError, ConnectionBroken, ProtocolViolation, OSError):
            return None
        finally:
            if response is not None:
                response.release()
        return time.perf_counter() - started if ok else None
