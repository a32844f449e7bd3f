"""A bounded fuzz run of the router's request parsing (issue 13): request heads and bodies
built from the pieces that break parsers, mutations of valid requests, and plain random
bytes, sent raw to its `HttpServer`, then EOF. Whatever comes in:
- what comes back is nothing, or HTTP responses in full, none a 5xx;
- the connection is closed (the client half-closed: nothing is left waiting);
- nothing is logged at ERROR and no exception reaches the event loop;
- a legitimate request on a new connection is still answered.

Bounded: a fixed number of examples, no deadline per example (the machine is shared) and
no timing assertion; each exchange has READ_DEADLINE to close, which only a bug reaches.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factory_router.app.http_message import Request
from factory_router.app.http_server import HttpServer, ServerLimits
from tests.unit.router.http_wire import exchange, wait_until

LIMITS = ServerLimits(max_head_bytes=2048, max_body_bytes=1024, client_idle=5, client_request=5)
LEGIT = b"GET /legit HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"

METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"PRI", b"get", b"G T", b""]
TARGETS = [b"/", b"/v1/chat/completions", b"/a?b=c&b", b"*", b"http://h/x", b"h:443",
           b"/%00", b"/a b", b"", b"/\x00", b"/\xff", b"/" + b"a" * 2100]  # fmt: skip
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.x", b"http/1.1", b""]
NAMES = [b"host", b"content-length", b"transfer-encoding", b"expect", b"connection",
         b"upgrade", b"x-a", b"Content-Length", b"content-length ", b" host", b"x\x00y",
         b""]  # fmt: skip
VALUES = [b"t", b"0", b"3", b"5", b"-1", b"+5", b"0x5", b"5, 5", b"99999999999999999999",
          b"chunked", b"chunked, identity", b"identity, chunked", b"gzip", b"100-continue",
          b"close", b"keep-alive", b"upgrade", b"h2c", b"a\x00b", b"a\x01b", b"\tx\t", b"",
          b"\xff", b"x" * 3000]  # fmt: skip
SEPARATORS = [b": ", b":", b" : ", b":\t", b""]
LINE_ENDS = [b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\n "]
NOISE = b"\r\n\x00\t :;,\x7f\xff0123456789abcdefxX-+"


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    out = b""
    for data in draw(st.lists(st.binary(max_size=40), max_size=4)):
        sizes = [b"%x" % len(data), b"%x" % (len(data) + 1), b"ffffffffffffffffff", b"z"]
        size = draw(st.sampled_from(sizes))
        ext = draw(st.sampled_from([b"", b";a=b", b";\n"]))
        eol = draw(st.sampled_from(LINE_ENDS))
        out += size + ext + eol + data + eol
    trailer = draw(st.sampled_from([b"", b"x: y\r\n", b"x: y\n", b"content-length: 3\r\n"]))
    return out + b"0\r\n" + trailer + draw(st.sampled_from(LINE_ENDS))


@st.composite
def built_request(draw: st.DrawFn) -> bytes:
    """A request assembled from pieces, each piece either right or a known way to be wrong."""
    eol = draw(st.sampled_from(LINE_ENDS))
    line = b" ".join(draw(st.sampled_from(choices)) for choices in (METHODS, TARGETS, VERSIONS))
    headers = [
        draw(st.sampled_from(NAMES)) + draw(st.sampled_from(SEPARATORS)) + value + eol
        for value in draw(st.lists(st.sampled_from(VALUES), max_size=6))
    ]
    body = draw(st.one_of(st.binary(max_size=1100), chunked_body()))
    return line + eol + b"".join(headers) + eol + body


def valid_request(body: bytes, chunked: bool) -> bytes:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\n"
    if chunked:
        chunks = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        return head + b"transfer-encoding: chunked\r\n\r\n" + chunks
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    """One to three valid requests (pipelined), then a few byte-level mutations."""
    piece = st.tuples(st.binary(min_size=1, max_size=64), st.booleans())
    pieces = draw(st.lists(piece, min_size=1, max_size=3))
    data = bytearray(b"".join(valid_request(body, chunked) for body, chunked in pieces))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        noise = draw(
            st.sampled_from([bytes([b]) for b in NOISE]) | st.binary(min_size=1, max_size=3)
        )
        if action == "insert":
            data[at:at] = noise
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif action == "replace":
            data[at : at + len(noise)] = noise
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


STREAMS = st.one_of(built_request(), mutated_request(), st.binary(max_size=600))


async def answer(request: Request) -> None:
    # 204: no body, so a HEAD and a GET answer parse alike on the client side.
    request.respond(204, {"x-path": request.path[:64]})


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


def test_fuzzed_requests_get_a_valid_answer_or_a_close_and_the_server_serves_on() -> None:
    errors = _Errors()
    root = logging.getLogger()
    root.addHandler(errors)
    loop_errors: list[str] = []

    def on_loop_error(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        loop_errors.append(str(context.get("message")) + " " + repr(context.get("exception")))

    async def start() -> tuple[HttpServer, int]:
        asyncio.get_running_loop().set_exception_handler(on_loop_error)
        server = HttpServer(answer, LIMITS)
        return server, await server.start("127.0.0.1", 0)

    try:
        with asyncio.Runner() as runner:
            server, port = runner.run(start())

            @settings(
                max_examples=300,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(data=STREAMS)
            def exchange_one(data: bytes) -> None:
                errors.records.clear()  # each example answers for its own
                loop_errors.clear()
                reply = runner.run(exchange(port, data, half_close=True))
                assert reply.garbage is None, (data, reply.raw)
                assert reply.closed, (data, reply.raw)
                assert all(100 <= s < 500 for s in reply.statuses), (data, reply.raw)
                legit = runner.run(exchange(port, LEGIT))
                assert legit.statuses == [204] and legit.closed, legit.raw
                assert not errors.records and not loop_errors, (data, errors.records, loop_errors)

            try:
                exchange_one()
                runner.run(wait_until(lambda: not server.connections, timeout=5))
            finally:
                runner.run(server.shutdown(1.0))
    finally:
        root.removeHandler(errors)
    assert not errors.records and not loop_errors
