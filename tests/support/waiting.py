"""The one way tests wait: poll a predicate until it holds or a deadline passes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = ""
) -> T:
    """Return the first truthy value of `predicate()`; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}: last value {last!r}"
            )
        time.sleep(interval)
        last = predicate()
    return last


async def async_wait_until(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float,
    interval: float = 0.1,
    what: str = "",
) -> T:
    """`wait_until` inside an event loop; the predicate may be a plain or an async function."""

    async def value() -> T:
        result = predicate()
        if inspect.isawaitable(result):
            return cast(T, await result)
        return cast(T, result)

    deadline = time.monotonic() + timeout
    last = await value()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")
        await asyncio.sleep(interval)
        last = await value()
    return last
