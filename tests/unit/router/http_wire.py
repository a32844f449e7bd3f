"""Raw HTTP/1.1 on 127.0.0.1 for the server tests: open connections, write bytes, read
what comes back until the server closes, and split it into responses with llhttp."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httptools

from tests.support.waiting import async_wait_until

READ_DEADLINE = 5.0  # seconds for a local server to answer and close; only hit on a bug
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def wait_until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """The project's one way to wait (`tests.support.waiting`), polling every 10 ms."""
    await async_wait_until(predicate, timeout, interval=0.01, what=what or str(predicate))


def post_head(length: int, extra: bytes = b"") -> bytes:
    """The head of a POST to the chat API with a body of `length` bytes."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n" % length
    return head + extra + b"\r\n"


@asynccontextmanager
async def connections(port: int, n: int) -> AsyncIterator[list[Conn]]:
    """`n` open connections, all closed (aborted) on the way out."""
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]
    try:
        yield opened
    finally:
        for _, writer in opened:
            writer.transport.abort()


@dataclass
class Reply:
    """What one connection got: the responses' statuses, in order, and whether the server
    closed it (within READ_DEADLINE); `garbage` is set when the bytes were not HTTP."""

    statuses: list[int] = field(default_factory=list)
    closed: bool = False
    garbage: str | None = None
    raw: bytes = b""

    @property
    def refused(self) -> bool:
        """Answered 4xx/5xx, or closed with no successful answer."""
        return any(s >= 400 for s in self.statuses) or (
            self.closed and not any(200 <= s < 300 for s in self.statuses)
        )

    def summary(self) -> str:
        """e.g. `400 closed`, `100 200 open`."""
        return " ".join([*map(str, self.statuses), "closed" if self.closed else "open"])


class _Responses:
    """httptools callbacks: one status per complete response (a 100 Continue included)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.statuses: list[int] = []

    def on_message_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())


def parse_responses(raw: bytes) -> tuple[list[int], str | None]:
    """The statuses of the responses in `raw`, and what was wrong if it is not HTTP."""
    responses = _Responses()
    try:
        responses.parser.feed_data(raw)
    except httptools.HttpParserError as exc:
        return responses.statuses, f"{type(exc).__name__}: {exc}"
    return responses.statuses, None


async def read_until_closed(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True), or until READ_DEADLINE (False)."""
    out = bytearray()
    try:
        async with asyncio.timeout(READ_DEADLINE):
            while data := await reader.read(65536):
                out += data
    except TimeoutError:
        return bytes(out), False
    except ConnectionResetError:
        pass  # closed with unread bytes on its side: a reset, still a close
    return bytes(out), True


async def exchange(port: int, data: bytes, *, half_close: bool = False) -> Reply:
    """Send `data` on a new connection (then EOF if `half_close`) and read until closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
            if half_close:
                writer.write_eof()
        raw, closed = await read_until_closed(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    statuses, garbage = parse_responses(raw)
    return Reply(statuses, closed, garbage, raw)
