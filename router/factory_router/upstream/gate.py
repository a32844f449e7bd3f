"""`Gate`: the router's connection slots (the whole pool's, and each origin's).

An `asyncio.Semaphore` with what the request path needs and nothing it pays for: a free
slot is taken without a coroutine (`try_take`), checking for one costs no scan of the
waiters, and a slot released while requests wait passes straight to the first of them
(first come, first served). Bounding the wait is the caller's (`asyncio.timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Gate:
    """At most `size` holders at a time."""

    __slots__ = ("_waiters", "free", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a gate needs at least one slot")
        self.size = size
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def idle(self) -> bool:
        """No holder (and so no waiter)."""
        return self.free == self.size

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody waits for one; never suspends."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting in line for one if need be."""
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot as the wait ended: it goes to the next
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the first waiter still waiting, else to the free ones."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1
