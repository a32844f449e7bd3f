"""`upstream.gate.Gate`, the router's connection slots: bounded, first come first served,
and a wait that ends (timeout, cancel) never keeps or loses a slot."""

from __future__ import annotations

import asyncio

import pytest

from factory_router.upstream.gate import Gate


async def test_free_slots_are_taken_at_once_then_waiters_queue_in_order() -> None:
    gate = Gate(2)
    assert gate.try_take() and gate.try_take()
    assert not gate.try_take()
    served: list[int] = []

    async def wait(i: int) -> None:
        await gate.take()
        served.append(i)

    waiters = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert served == []
    gate.release()
    gate.release()
    await asyncio.sleep(0)
    assert served == [0, 1]
    assert not gate.try_take()  # a waiter is still in line: nobody jumps it
    gate.release()
    await asyncio.gather(*waiters)
    assert served == [0, 1, 2]
    gate.release()  # the two holders now: 1 and 2
    gate.release()
    assert gate.idle


async def test_a_wait_that_times_out_leaves_the_line_and_takes_nothing() -> None:
    gate = Gate(1)
    await gate.take()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await gate.take()
    gate.release()
    assert gate.idle and gate.try_take()


async def test_a_slot_handed_to_a_waiter_cancelled_before_it_ran_goes_to_the_next() -> None:
    gate = Gate(1)
    await gate.take()
    first = asyncio.create_task(gate.take())
    second = asyncio.create_task(gate.take())
    await asyncio.sleep(0)
    gate.release()  # handed to `first` ...
    first.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the slot passed on
    assert gate.free == 0
    gate.release()
    assert gate.idle


def test_a_gate_needs_a_slot() -> None:
    with pytest.raises(ValueError):
        Gate(0)
