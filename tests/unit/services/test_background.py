"""services.background.alongside: loops that live exactly as long as the work beside them."""

from __future__ import annotations

import asyncio

import pytest

from core.errors import Unavailable
from services.background import alongside


async def test_loops_run_during_the_body_and_are_cancelled_after_it() -> None:
    ticks: list[int] = []
    ended = asyncio.Event()

    async def loop() -> None:
        try:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)
        finally:
            ended.set()

    async with alongside(loop()):
        await asyncio.sleep(0.05)
    assert ended.is_set() and ticks  # awaited: nothing of it runs after the block


async def test_the_bodys_own_error_is_raised_as_it_is() -> None:
    with pytest.raises(Unavailable, match="away"):
        async with alongside(asyncio.sleep(10)):
            raise Unavailable("NATS is away")


async def test_a_loop_that_fails_stops_the_body_loudly() -> None:
    async def broken() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("bug")

    body_cancelled = False
    with pytest.raises(ExceptionGroup) as info:
        async with alongside(broken()):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                body_cancelled = True
                raise
    assert body_cancelled
    assert [type(e) for e in info.value.exceptions] == [RuntimeError]
