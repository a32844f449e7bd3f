"""The router's server wired (issue 13): a POST to the API without a valid key is refused
on its head, before any 100 Continue and before its body; the client connection cap comes
from the config and from `--max-client-connections`."""

from __future__ import annotations

import io
import json

from factory_router.app.logs import AccessLog
from factory_router.main import Settings
from factory_router.policy.config import Limits, RouterConfig, Timeouts
from tests.unit.router.http_wire import connections, exchange, post_head, read_until_closed
from tests.unit.router.router_testkit import KEYS, router

HEALTH = b"GET /healthz HTTP/1.1\r\nhost: t\r\n"


async def test_an_api_post_without_a_valid_key_is_refused_on_its_head() -> None:
    log = io.BytesIO()
    async with router([], access_log=AccessLog(log)) as r:
        expect = b"expect: 100-continue\r\n"
        async with connections(r.port, 2) as [(refused, w1), (accepted, w2)]:
            w1.write(post_head(4 * 1024 * 1024, expect + b"authorization: Bearer sk-nope\r\n"))
            head = await refused.readuntil(b"\r\n\r\n")  # on the head alone: no body sent
            assert head.startswith(b"HTTP/1.1 401 ") and b"connection: close" in head
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await refused.readexactly(length)
            assert json.loads(body)["error"]["code"] == "invalid_api_key"
            w2.write(post_head(2, expect + f"authorization: Bearer {KEYS['eu']}\r\n".encode()))
            assert await accepted.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        # Only the API's POST paths are checked on the head; the rest as before.
        reply = await exchange(r.port, HEALTH + b"connection: close\r\n\r\n")
        assert reply.statuses == [200]
        r.state.access_log.flush()
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(x["path"], x["status"], x["reason"]) for x in lines if x["status"] == 401] == [
        ("/v1/chat/completions", 401, "invalid_api_key")
    ]


async def test_the_client_connection_cap_comes_from_the_config() -> None:
    limits = Limits(max_client_connections=2)
    config = RouterConfig(timeouts=Timeouts(grace_period=1.0), limits=limits)
    async with router([], config=config) as r, connections(r.port, 2) as kept:
        for reader, writer in kept:  # answered: both are open and counted
            writer.write(HEALTH + b"\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        async with connections(r.port, 1) as [(reader, _)]:
            assert await read_until_closed(reader) == (b"", True)


def test_max_client_connections_flag() -> None:
    args = ["--region", "r", "--tenants", "t.yaml", "--backends", "b.yaml"]
    default = Settings(_cli_parse_args=args)  # type: ignore[call-arg]
    assert default.router_config().limits.max_client_connections == 4096
    s = Settings(_cli_parse_args=[*args, "--max-client-connections", "64"])  # type: ignore[call-arg]
    assert s.router_config().limits.max_client_connections == 64
