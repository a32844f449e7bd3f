"""What a handler of the router's HTTP/1.1 server sees: a request, and the means to
answer it (`Request`), with the rules of request framing beyond llhttp's (`framing_error`)
and the framing of responses. The connection underneath is `http_server`'s; this module
needs of it only the `Wire` below."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qsl

from factory_router.policy.errors import RouterError

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class ClientGone(ConnectionResetError):
    """The client's connection closed before the response was complete."""


class Wire(Protocol):
    """The connection a request came on, as its response needs it."""

    closing: bool  # the connection closes after this response

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...
    def date_line(self) -> bytes: ...


def response_head(
    status: int,
    headers: dict[str, str],
    length: int | None,
    *,
    chunked: bool,
    keep_alive: bool,
    http11: bool,
    date_line: bytes,
) -> bytes:
    """A response's status line and headers, framed by `length`, else chunked, else by
    the connection closing."""
    reason = _REASONS.get(status, b"Unknown")
    lines = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:  # never a header injection
            continue
        lines.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    if length is not None:
        lines.append(b"content-length: %d\r\n" % length)
    elif chunked:
        lines.append(b"transfer-encoding: chunked\r\n")
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    elif not http11:  # HTTP/1.0 closes unless told otherwise
        lines.append(b"connection: keep-alive\r\n")
    lines.append(date_line)
    lines.append(b"\r\n")
    return b"".join(lines)


def framing_error(
    http_version: str, headers: Mapping[str, str], repeated: Collection[str]
) -> str | None:
    """Why a request head that llhttp accepted is refused all the same (400), else None.

    llhttp already refuses Content-Length with Transfer-Encoding, a Content-Length repeated
    or not a number, a Transfer-Encoding whose last coding is not chunked, obs-fold, bare
    CR or LF, and control characters. Where uvicorn goes on, the router does not, since no
    OpenAI client goes there: only HTTP/1.0 and 1.1 (llhttp serves 0.9 and "2.0" heads);
    a Transfer-Encoding other than exactly `chunked` (`identity, chunked`; any coding at
    all in HTTP/1.0); and, as RFC 9112 section 3.2 asks, an HTTP/1.1 request with no Host
    or with several. `repeated`: the names of headers given more than once."""
    if http_version not in ("1.0", "1.1"):
        return f"HTTP/{http_version} is not served; use HTTP/1.1."
    coding = headers.get("transfer-encoding")
    if coding is not None and (http_version == "1.0" or coding.strip().lower() != "chunked"):
        return "Transfer-Encoding other than 'chunked' (in HTTP/1.1) is not accepted."
    if http_version == "1.1" and ("host" not in headers or "host" in repeated):
        return "An HTTP/1.1 request needs exactly one Host header."
    return None


def error_response(err: RouterError, date_line: bytes) -> bytes:
    """A whole error response in OpenAI's shape, for what no handler answers; the
    connection closes after it."""
    body = json.dumps(err.body()).encode()
    headers = {"content-type": "application/json"}
    head = response_head(
        err.status, headers, len(body), chunked=False, keep_alive=False, http11=True,
        date_line=date_line,
    )  # fmt: skip
    return head + body


class Request:
    """One request and the means to answer it: `respond()` in one write, or `start()`,
    `write()`..., `end()` for a stream. Header names are lower-case; a repeated header's
    values are joined with ", "."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_done",
        "_started",
        "authenticated",
        "body",
        "body_too_large",
        "headers",
        "http11",
        "keep_alive",
        "method",
        "path",
        "query_string",
    )

    def __init__(
        self,
        conn: Wire,
        *,
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        http11: bool,
        keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        self.body = b""
        self.body_too_large = False
        # What a head check learnt of the client (the router: its tenant and the table it
        # was found in), so that the handler does not look it up again.
        self.authenticated: object = None
        self._started = False
        self._done = False
        self._chunked = False

    @property
    def query(self) -> dict[str, str]:
        """Query parameters (the first value of a repeated one)."""
        params: dict[str, str] = {}
        for name, value in parse_qsl(self.query_string):
            params.setdefault(name, value)
        return params

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length", "")
        return int(value) if value.isdigit() else None

    @property
    def complete(self) -> bool:
        """The whole response has been handed to the connection."""
        return self._done

    def respond(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        """The whole response in one write."""
        self._begin()
        self._done = True
        head = self._head(status, headers, len(body))
        self._conn.write(head if self.method == "HEAD" else head + body)

    async def start(
        self,
        status: int,
        headers: dict[str, str],
        content_length: int | None = None,
        first: bytes = b"",
    ) -> None:
        """Send the head of a streamed response: sized by `content_length`, else chunked
        (HTTP/1.1) or ended by closing the connection (HTTP/1.0). `first`, the body's
        first piece when it is at hand, goes in the same write (one send, and one wake-up
        of the client, fewer)."""
        self._begin()
        if content_length is None:
            if self.http11:
                self._chunked = True
            else:
                self.keep_alive = False
        head = self._head(status, headers, content_length)
        self._conn.write(head + self._framed(first) if first and self.method != "HEAD" else head)
        await self._conn.drain()

    async def write(self, chunk: bytes) -> None:
        """One piece of the body, sent as it is (raises ClientGone once the client left)."""
        if not chunk:
            return
        self._conn.write(self._framed(chunk))
        await self._conn.drain()

    def _framed(self, chunk: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk

    async def end(self) -> None:
        """The body is complete."""
        self._done = True
        if self._chunked:
            self._conn.write(b"0\r\n\r\n")
        await self._conn.drain()

    def abort(self) -> None:
        """Close the connection mid-response: the client sees a truncated answer, not a
        clean end."""
        self.keep_alive = False
        self._done = True  # as complete as it will get
        self._conn.close()

    def _begin(self) -> None:
        if self._started:
            raise RuntimeError("response already started")
        self._started = True
        if self._conn.closing:
            self.keep_alive = False

    def _head(self, status: int, headers: dict[str, str], length: int | None) -> bytes:
        return response_head(
            status, headers, length, chunked=self._chunked, keep_alive=self.keep_alive,
            http11=self.http11, date_line=self._conn.date_line(),
        )  # fmt: skip
