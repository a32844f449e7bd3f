"""The router's HTTP/1.1 server against uvicorn + httptools, case by case: the classic
request-smuggling and framing cases, sent as raw bytes to both, and the router at least as
strict (issue 13: the server stays on httptools only with this proof).

For each case, the same bytes go to the router's `HttpServer` and to uvicorn's httptools
protocol (both llhttp), each with a handler that records the requests it sees. Then:
- uvicorn refuses (4xx, or closes with no success) => the router refuses too;
- what the router's handler saw is a prefix of what uvicorn's saw (same methods, paths
  and bodies, no more requests): the router never reads the bytes as more requests, or
  other ones; and it never sees the marker `/smuggled`, which each case places where a
  lenient parser would find a second request;
- never a 5xx; and the router's outcome is the one in the table below, so the table
  stays true.

Outcomes (statuses in order, then whether the connection closed) with uvicorn 0.54.0 and
httptools 0.9.0. `*` = the router is stricter: llhttp lets it through, and uvicorn with
it; `http_message.framing_error` does not. `(app ran)` = uvicorn had started its app on
the head when the framing error came (it reads bodies as they stream); the router runs a
handler only on a complete, valid request.

| case | uvicorn | router |
|---|---|---|
| cl_te: Content-Length + Transfer-Encoding | 400 closed | 400 closed |
| te_cl: the same, TE first | 400 closed | 400 closed |
| cl0_te: Content-Length: 0 + TE | 400 closed | 400 closed |
| cl_twice_same: 2 and 2 | 400 closed | 400 closed |
| cl_twice_conflicting: 2 and 40 | 400 closed | 400 closed |
| cl_list: `2, 2` | 400 closed | 400 closed |
| cl_plus / cl_negative / cl_inner_space / cl_hex | 400 closed | 400 closed |
| cl_overflow: 23 digits | 400 closed | 400 closed |
| te_obs_fold: `Transfer-Encoding:` CRLF SP `chunked` | 400 closed | 400 closed |
| obs_fold_other: a folded line before TE | 400 closed | 400 closed |
| te_chunked_identity | 400 closed | 400 closed |
| te_identity_chunked | 200 200 closed, /smuggled served | 400 closed * |
| te_twice: chunked, then identity | 400 closed | 400 closed |
| te_xchunked / te_gzip | 400 closed (app ran) | 400 closed |
| te_space_before_colon | 400 closed | 400 closed |
| te_in_http10 | 200 closed | 400 closed * |
| chunk_size_overflow: 17 / 18 hex digits | 400 closed (app ran) | 400 closed |
| chunk_size_not_hex | 400 closed (app ran) | 400 closed |
| chunk_ext_bare_lf / chunk_lines_bare_lf | 400 closed (app ran) | 400 closed |
| chunk_data_overrun: no CRLF after the data | 400 closed (app ran) | 400 closed |
| trailer_bare_lf | 400 closed (app ran) | 400 closed |
| bare_lf_request / bare_lf_header | 400 closed | 400 closed |
| bare_cr_request / bare_cr_header | 400 closed | 400 closed |
| nul / ctl / del in a header value, nul in a name | 400 closed | 400 closed |
| header_leading_space | 400 closed | 400 closed |
| empty_header_name | 400 closed | 400 closed |
| nul / ctl / space / 0xff in the target | 400 closed | 400 closed |
| absolute_form: `http://evil.example/x` | 200 closed, path /x | 200 closed, path /x |
| absolute_form_https | 200 closed | 200 closed |
| authority_form: CONNECT | 400 closed | 400 closed |
| http09: `GET /a` CRLF CRLF | 200 closed | 400 closed * |
| http20_head: `HTTP/2.0` | 200 closed | 400 closed * |
| bad_version: `HTTP/1.x` | 400 closed | 400 closed |
| lower_case_method | 400 closed | 400 closed |
| no_host (HTTP/1.1) | 200 closed | 400 closed * |
| two_hosts | 200 closed | 400 closed * |
| pipelined_after_unread_body: body looks like a request | 200 200 closed | 200 200 closed |
| get_with_body: the body looks like a request | 200 closed | 200 closed |
| after_connection_close: bytes after it | 200 closed | 200 closed |
| after_http10: bytes after it | 200 closed | 200 closed |
| expect_100_with_body | 100 200 closed | 100 200 closed |

The absolute form is accepted, as RFC 9112 section 3.2.2 requires of a server; its authority
is ignored (the router serves no virtual hosts). `Expect: 100-continue` without a body
sent yet is its own test below; refusing a request on its head before any 100 Continue is
tests/unit/router/test_http_resources.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from factory_router.app.http_message import Request
from factory_router.app.http_server import HttpServer, ServerLimits
from tests.unit.router.http_wire import (
    READ_DEADLINE,
    Reply,
    exchange,
    parse_responses,
    read_until_closed,
)

LIMITS = ServerLimits(
    max_head_bytes=8192, max_body_bytes=65536, client_idle=30.0, client_request=30.0
)
Seen = list[tuple[str, str, bytes]]  # method, path, body, as each handler saw them

H = b"host: t\r\n"
CLOSE = b"connection: close\r\n"
# Where a lenient parser would find a second request.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nhost: t\r\n" + CLOSE + b"\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"
LAST = b"0\r\n\r\n" + SMUGGLED  # a last chunk, then the marker


def post(head: bytes, rest: bytes = b"") -> bytes:
    """A POST / whose head ends with `head` lines, then `rest`."""
    return b"POST / HTTP/1.1\r\n" + H + head + b"\r\n" + rest


def get(target: bytes, head: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + target + b" " + version + b"\r\n" + H + head + CLOSE + b"\r\n"


def unread(body: bytes) -> bytes:
    length = b"content-length: %d\r\n" % len(body)
    return b"POST /unread HTTP/1.1\r\n" + H + length + b"\r\n" + body


# name -> (bytes, the router's outcome: `Reply.summary()`)
CASES: dict[str, tuple[bytes, str]] = {
    # Content-Length and Transfer-Encoding together
    "cl_te": (post(b"content-length: 5\r\n" + CHUNKED, LAST), "400 closed"),
    "te_cl": (post(CHUNKED + b"content-length: 40\r\n", LAST), "400 closed"),
    "cl0_te": (post(b"content-length: 0\r\n" + CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"), "400 closed"),
    # Content-Length repeated, conflicting or not a plain number
    "cl_twice_same": (
        post(b"content-length: 2\r\ncontent-length: 2\r\n" + CLOSE, b"ab"), "400 closed"
    ),
    "cl_twice_conflicting": (
        post(b"content-length: 2\r\ncontent-length: 40\r\n", b"ab" + SMUGGLED), "400 closed"
    ),
    "cl_list": (post(b"content-length: 2, 2\r\n" + CLOSE, b"ab"), "400 closed"),
    "cl_plus": (post(b"content-length: +2\r\n" + CLOSE, b"ab"), "400 closed"),
    "cl_negative": (post(b"content-length: -1\r\n" + CLOSE, b"ab"), "400 closed"),
    "cl_inner_space": (post(b"content-length: 2 2\r\n" + CLOSE, b"ab"), "400 closed"),
    "cl_hex": (post(b"content-length: 0x2\r\n" + CLOSE, b"ab"), "400 closed"),
    "cl_overflow": (post(b"content-length: 99999999999999999999999\r\n", b"ab"), "400 closed"),
    # Transfer-Encoding: obs-fold, lists, unknown codings, HTTP/1.0
    "te_obs_fold": (
        post(b"transfer-encoding:\r\n chunked\r\ncontent-length: 3\r\n", LAST),
        "400 closed",
    ),
    "obs_fold_other": (post(b"x-a: b\r\n chunked\r\n" + CHUNKED, LAST), "400 closed"),
    "te_chunked_identity": (
        post(b"transfer-encoding: chunked, identity\r\n", LAST), "400 closed"
    ),
    "te_identity_chunked": (
        post(b"transfer-encoding: identity, chunked\r\n", LAST), "400 closed"
    ),
    "te_twice": (post(CHUNKED + b"transfer-encoding: identity\r\n", LAST), "400 closed"),
    "te_xchunked": (post(b"transfer-encoding: xchunked\r\n", LAST), "400 closed"),
    "te_gzip": (post(b"transfer-encoding: gzip\r\n", LAST), "400 closed"),
    "te_space_before_colon": (post(b"transfer-encoding : chunked\r\n", LAST), "400 closed"),
    "te_in_http10": (b"POST / HTTP/1.0\r\n" + CHUNKED + b"\r\n0\r\n\r\n" + SMUGGLED, "400 closed"),
    # chunk sizes and chunk lines
    "chunk_size_overflow_17": (
        post(CHUNKED, b"10000000000000001\r\nab\r\n0\r\n\r\n" + SMUGGLED), "400 closed"
    ),
    "chunk_size_overflow_18": (
        post(CHUNKED, b"ffffffffffffffffff\r\nab\r\n0\r\n\r\n" + SMUGGLED), "400 closed"
    ),
    "chunk_size_not_hex": (post(CHUNKED, b"zz\r\nab\r\n0\r\n\r\n" + SMUGGLED), "400 closed"),
    "chunk_ext_bare_lf": (post(CHUNKED, b"2;x\nab\r\n0\r\n\r\n" + SMUGGLED), "400 closed"),
    "chunk_lines_bare_lf": (post(CHUNKED, b"2\nab\n0\n\n" + SMUGGLED), "400 closed"),
    "chunk_data_overrun": (post(CHUNKED, b"2\r\nabXX0\r\n\r\n" + SMUGGLED), "400 closed"),
    "trailer_bare_lf": (post(CHUNKED, b"0\r\nx: y\n\r\n" + SMUGGLED), "400 closed"),
    # bare LF and bare CR as line ends
    "bare_lf_request": (b"GET /a HTTP/1.1\nhost: t\n\n" + SMUGGLED, "400 closed"),
    "bare_lf_header": (b"GET /a HTTP/1.1\r\nhost: t\nx: y\r\n\r\n" + SMUGGLED, "400 closed"),
    "bare_cr_request": (b"GET /a HTTP/1.1\rhost: t\r\n\r\n" + SMUGGLED, "400 closed"),
    "bare_cr_header": (b"GET /a HTTP/1.1\r\nhost: t\rx: y\r\n\r\n" + SMUGGLED, "400 closed"),
    # NUL and control characters
    "nul_in_header_value": (get(b"/a", b"x: a\x00b\r\n"), "400 closed"),
    "nul_in_header_name": (get(b"/a", b"x\x00y: a\r\n"), "400 closed"),
    "ctl_in_header_value": (get(b"/a", b"x: a\x01b\r\n"), "400 closed"),
    "del_in_header_value": (get(b"/a", b"x: a\x7fb\r\n"), "400 closed"),
    "header_leading_space": (b"GET /a HTTP/1.1\r\n host: t\r\n" + CLOSE + b"\r\n", "400 closed"),
    "empty_header_name": (get(b"/a", b": x\r\n"), "400 closed"),
    "nul_in_target": (get(b"/a\x00b"), "400 closed"),
    "ctl_in_target": (get(b"/a\x01b"), "400 closed"),
    "space_in_target": (get(b"/a b"), "400 closed"),
    "high_byte_in_target": (get(b"/a\xffb"), "400 closed"),
    # request targets and versions
    "absolute_form": (get(b"http://evil.example/x"), "200 closed"),
    "absolute_form_https": (get(b"https://other:443/x?y=1"), "200 closed"),
    "authority_form": (b"CONNECT evil.example:443 HTTP/1.1\r\n" + H + b"\r\n", "400 closed"),
    "http09": (b"GET /a\r\n\r\n", "400 closed"),
    "http20_head": (get(b"/a", version=b"HTTP/2.0"), "400 closed"),
    "bad_version": (get(b"/a", version=b"HTTP/1.x"), "400 closed"),
    "lower_case_method": (b"get /a HTTP/1.1\r\n" + H + CLOSE + b"\r\n", "400 closed"),
    "no_host": (b"GET /a HTTP/1.1\r\n" + CLOSE + b"\r\n", "400 closed"),
    "two_hosts": (get(b"/a", b"host: other\r\n"), "400 closed"),
    # pipelining, bodies that look like requests, what follows a closing request
    "pipelined_after_unread_body": (
        unread(SMUGGLED) + b"GET /next HTTP/1.1\r\n" + H + CLOSE + b"\r\n",
        "200 200 closed",
    ),
    "get_with_body": (
        get(b"/a", b"content-length: %d\r\n" % len(SMUGGLED)) + SMUGGLED,
        "200 closed",
    ),
    "after_connection_close": (get(b"/a") + SMUGGLED, "200 closed"),
    "after_http10": (b"GET /a HTTP/1.0\r\n\r\n" + SMUGGLED, "200 closed"),
    "expect_100_with_body": (
        post(b"content-length: 2\r\nexpect: 100-continue\r\n" + CLOSE, b"ab"), "100 200 closed"
    ),
}  # fmt: skip


@dataclass
class Servers:
    router_port: int
    router_seen: Seen
    uvicorn_port: int
    uvicorn_seen: Seen


@asynccontextmanager
async def both_servers() -> AsyncIterator[Servers]:
    """The router's HttpServer and uvicorn's httptools protocol on 127.0.0.1, each with a
    handler that records requests and answers 200 (without reading /unread bodies)."""
    router_seen: Seen = []
    uvicorn_seen: Seen = []

    async def handler(request: Request) -> None:
        body = b"" if request.path.startswith("/unread") else request.body
        router_seen.append((request.method, request.path, body))
        request.respond(200, {"content-type": "text/plain"}, b"ok")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        if not scope["path"].startswith("/unread"):
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
        uvicorn_seen.append((scope["method"], scope["path"], body))
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    router = HttpServer(handler, LIMITS)
    router_port = await router.start("127.0.0.1", 0)
    # uvicorn's own protocol class on a listener of ours: exactly its parsing and framing,
    # without its process-level machinery (signal handlers, logging configuration).
    config = Config(app, http="httptools", lifespan="off", log_config=None, access_log=False)
    state = ServerState()
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: HttpToolsProtocol(config=config, server_state=state, app_state={}),
        "127.0.0.1",
        0,
    )
    try:
        yield Servers(router_port, router_seen, listener.sockets[0].getsockname()[1], uvicorn_seen)
    finally:
        listener.close()
        for conn in list(state.connections):
            conn.shutdown()
        if state.tasks:
            await asyncio.wait(state.tasks, timeout=READ_DEADLINE)
        await listener.wait_closed()
        await router.shutdown(1.0)


@pytest.mark.parametrize("name", list(CASES))
async def test_the_router_is_at_least_as_strict_as_uvicorn(name: str) -> None:
    data, router_outcome = CASES[name]
    async with both_servers() as s:
        theirs = await exchange(s.uvicorn_port, data)
        ours = await exchange(s.router_port, data)
    assert ours.garbage is None and theirs.garbage is None, (ours.raw, theirs.raw)
    assert ours.summary() == router_outcome, ours.raw
    if theirs.refused:
        assert ours.refused, (theirs.summary(), ours.summary())
    assert s.router_seen == s.uvicorn_seen[: len(s.router_seen)], (s.router_seen, s.uvicorn_seen)
    assert all(path != "/smuggled" for _, path, _ in s.router_seen)
    assert all(status < 500 for status in ours.statuses + theirs.statuses)


async def expect_then_body(port: int) -> Reply:
    """Send a head with `Expect: 100-continue`; only once the 100 has come, the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(post(b"content-length: 5\r\nexpect: 100-continue\r\n" + CLOSE))
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_DEADLINE)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        await writer.drain()
        raw, closed = await read_until_closed(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    statuses, garbage = parse_responses(interim + raw)
    return Reply(statuses, closed, garbage, raw)


async def test_expect_100_continue_comes_before_the_body_on_both() -> None:
    async with both_servers() as s:
        theirs = await expect_then_body(s.uvicorn_port)
        ours = await expect_then_body(s.router_port)
    assert ours.summary() == theirs.summary() == "100 200 closed"
    assert s.router_seen == s.uvicorn_seen == [("POST", "/", b"hello")]
