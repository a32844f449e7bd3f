"""Component `redis`: one `redis-server` for the routers' shared quotas.

Bound to 127.0.0.1 on a port of the fleet home, no persistence (the quotas' buckets are
worth seconds to minutes; an empty Redis is a full bucket), its working folder in the
home. The binary is Debian's, installed into the toolchain cache when missing
(`factoryctl.redis_server`). The router gets its URL (`redis_url` in the home's state).
"""

from __future__ import annotations

import socket

from factoryctl import procs
from factoryctl.component import (
    ComponentStatus,
    FleetContext,
    process_status,
    record_env,
    wait_until,
)
from factoryctl.redis_server import ensure_redis

READY_TIMEOUT_S = 30.0


def redis_argv(binary: str, port: int, folder: str) -> list[str]:
    """A Redis on 127.0.0.1:`port` that keeps nothing on disk."""
    return [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", folder,
        "--protected-mode", "yes",
        "--daemonize", "no",
    ]  # fmt: skip


def answers(port: int) -> bool:
    """True when a Redis answers PING on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisComponent:
    name = "redis"

    def url(self, ctx: FleetContext) -> str:
        return f"redis://127.0.0.1:{ctx.home.port('redis')}/0"

    def up(self, ctx: FleetContext) -> None:
        binary = ensure_redis(ctx.progress)
        port = ctx.home.port("redis")
        folder = ctx.home.root / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        procs.start(ctx.home, self.name, redis_argv(str(binary), port, str(folder)))
        wait_until(lambda: answers(port), READY_TIMEOUT_S, "redis-server to answer PING")
        record_env(ctx, redis_url=self.url(ctx))

    def down(self, ctx: FleetContext) -> None:
        procs.stop(ctx.home, self.name)

    def status(self, ctx: FleetContext) -> ComponentStatus:
        return process_status(ctx, self.name, answers(ctx.home.port("redis")), self.url(ctx))
