"""Redis of the local fleet: the version pin, and the server `dev up` starts (loopback,
nothing on disk). Needs the installed redis-server (`factoryctl dev tools`): fails, never
skips, without it."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from factoryctl import redis_server
from factoryctl.components.redis import answers, redis_argv
from tests.support.waiting import wait_until


def _fake(tmp_path: Path, output: str) -> Path:
    path = tmp_path / "redis-server"
    path.write_text(f"#!/bin/sh\necho '{output}'\n")
    path.chmod(0o755)
    return path


def test_the_pin_is_major_minor(tmp_path: Path) -> None:
    v = redis_server.REDIS_VERSION
    assert redis_server.matches_pin(_fake(tmp_path, f"Redis server v={v}.15 sha=0 bits=64"))
    assert not redis_server.matches_pin(_fake(tmp_path, f"Redis server v={v}0.1 bits=64"))
    assert not redis_server.matches_pin(tmp_path / "missing")


def _command(port: int, *args: str) -> bytes:
    line = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line.encode())
        return sock.recv(4096)


def test_the_fleets_redis_binds_loopback_and_keeps_nothing(tmp_path: Path) -> None:
    binary = redis_server.find_redis()
    if binary is None:
        pytest.fail("redis-server is not installed: run `.venv/bin/factoryctl dev tools`")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        redis_argv(str(binary), port, str(tmp_path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: answers(port), timeout=20, what="redis-server answers PING")
        assert b"\r\nsave\r\n$0\r\n\r\n" in _command(port, "CONFIG", "GET", "save")
        assert b"appendonly\r\n$2\r\nno" in _command(port, "CONFIG", "GET", "appendonly")
        assert b"127.0.0.1" in _command(port, "CONFIG", "GET", "bind")
    finally:
        proc.terminate()
        proc.wait(10)
    assert not list(tmp_path.iterdir())  # no dump.rdb, no appendonly file
