"""The upstream HTTP client (aiohttp, chosen by measurement: see bench/router_overhead).

`UpstreamClient.open()` makes one attempt against one backend and returns once the first
body byte has arrived (or the response is a complete, non-retryable answer). Until then
nothing has reached the client, so any failure is an `AttemptFailed` that the caller may
fail over from; after it, the caller relays the rest chunk by chunk.

    AttemptFailed(kind=...)   kind is one of:
      connect      could not connect / connection reset before the first byte
      timeout      no first byte within Timeouts.first_byte (a stalled engine)
      status       5xx, 429 or 404 from the engine (retryable; a 404 means the address no
                   longer holds an engine of this model: a stale endpoint whose address
                   now belongs to another pod)
      redirect     3xx from the engine: never followed (it could point anywhere)
      protocol     anything else that broke before the first byte

Redirects are never followed (allow_redirects=False); the router's timeouts and
connection limits all come from `policy.config`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from factory_router.policy.config import Limits, Timeouts
from factory_router.policy.fleet import Backend

RETRYABLE_STATUS = frozenset({404, 429, 500, 502, 503, 504})


class AttemptFailed(Exception):
    def __init__(self, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status


@dataclass
class Opened:
    """A response whose headers and first body bytes have arrived."""

    response: aiohttp.ClientResponse
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
        """Drop the connection: the engine sees the disconnect and aborts the request."""
        self.response.close()


class UpstreamClient:
    def __init__(self, timeouts: Timeouts, limits: Limits) -> None:
        self.timeouts = timeouts
        self.limits = limits
        self._session: aiohttp.ClientSession | None = None
        # The first-byte deadline is enforced around send + first read; afterwards the
        # socket read timeout is the idle limit between chunks.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.pool_acquire + timeouts.connect,
            sock_connect=timeouts.connect,
            sock_read=max(timeouts.idle, timeouts.first_byte),
        )

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.limits.max_connections,
                limit_per_host=self.limits.max_connections_per_host,
                keepalive_timeout=self.limits.keepalive_expiry,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                # No cookie jar: a cookie set by an engine for one tenant's request must not
                # ride along on another tenant's.
                cookie_jar=aiohttp.DummyCookieJar(),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def open(
        self,
        backend: Backend,
        method: str,
        path: str,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> Opened:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        started = time.perf_counter()
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self.timeouts.first_byte):
                response = await self._session.request(
                    method,
                    backend.url + path,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                )
                status = response.status
                if 300 <= status < 400:
                    raise AttemptFailed("redirect", f"engine answered {status}", status)
                if status in RETRYABLE_STATUS:
                    raise AttemptFailed("status", f"engine answered {status}", status)
                first = await response.content.readany()
        except AttemptFailed:
            if response is not None:
                response.close()
            raise
        except TimeoutError:
            if response is not None:
                response.close()
            raise AttemptFailed(
                "timeout", f"no first byte within {self.timeouts.first_byte:g}s"
            ) from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            if response is not None:
                response.close()
            raise AttemptFailed("connect", type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            if response is not None:
                response.close()
            raise AttemptFailed("protocol", type(exc).__name__) from None
        except BaseException:  # cancelled: the client went away
            if response is not None:
                response.close()
            raise
        return Opened(response, first, time.perf_counter() - started, started)

    async def probe(self, backend: Backend, headers: Mapping[str, str]) -> float | None:
        """`GET /health` on the backend: seconds to a 2xx answer, None on any failure.
        An RTT sample (the engine answers at once); probes never eject or retry."""
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not called")
        started = time.perf_counter()
        try:
            async with (
                asyncio.timeout(self.timeouts.probe),
                self._session.get(
                    backend.url + "/health", headers=headers, allow_redirects=False
                ) as response,
            ):
                await response.read()
                ok = 200 <= response.status < 300
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None
        return time.perf_counter() - started if ok else None
