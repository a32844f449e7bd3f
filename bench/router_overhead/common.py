"""Shared bench helpers: free ports, waiting for a port (with a deadline), the load
generator (aiohttp, closed loop, fixed concurrency), and process CPU time from /proc."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time
from typing import Any

import aiohttp

BODY = (
    b'{"model": "m", "messages": [{"role": "user", "content": "'
    + b"hello " * 40
    + b'"}], "max_tokens": 16}'
)
STREAM_BODY = BODY.replace(b'"max_tokens"', b'"stream": true, "max_tokens"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"port {port} not listening after {deadline}s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    url: str, n: int, concurrency: int, stream: bool, headers: dict[str, str]
) -> dict[str, Any]:
    body = STREAM_BODY if stream else BODY
    hdrs = {"content-type": "application/json", **headers}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        todo = iter(range(n))

        async def worker() -> None:
            nonlocal errors
            for _ in todo:
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=hdrs) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1e3,
        "rps": n / wall,
        "errors": errors,
        "wall_s": wall,
    }


async def load_rate(
    url: str, n: int, rate: float, stream: bool, headers: dict[str, str]
) -> dict[str, Any]:
    """Open loop: `n` requests at a fixed arrival rate (req/s), whatever the latency."""
    body = STREAM_BODY if stream else BODY
    hdrs = {"content-type": "application/json", **headers}
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=hdrs) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t0)

        tasks = []
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1e3,
        "rps": n / wall,
        "errors": errors,
        "wall_s": wall,
    }
