"""The log store's contract: chunks of one attempt or all, in order of writing, bytes exact,
stored or followed live."""

from __future__ import annotations

import asyncio

from services.ports import Backplane
from tests.contract.harness import Contract, OnMemory, OnNats, take


class LogStoreContract(Contract):
    async def test_chunks_of_one_attempt_in_order(self, bp: Backplane) -> None:
        logs = bp.logs
        logs.write_nowait("r1", "load:eu", 1, b"hello ")
        logs.write_nowait("r1", "load:eu", 2, b"second attempt")
        logs.write_nowait("r1", "load:eu", 1, b"err\n", stream="stderr")
        logs.write_nowait("r1", "other", 1, b"not mine")
        last = logs.write_nowait("r2", "load:eu", 1, b"another run")
        assert isinstance(await last, int)
        one = [item async for item in logs.read("r1", "load:eu", 1)]
        assert one == [(1, b"hello "), (1, b"err\n")]
        every = [item async for item in logs.read("r1", "load:eu")]
        assert every == [(1, b"hello "), (2, b"second attempt"), (1, b"err\n")]
        assert [item async for item in logs.read("r1", "missing")] == []
        assert [item async for item in logs.read("r1", "load:eu", 3)] == []

    async def test_binary_output_comes_back_exact(self, bp: Backplane) -> None:
        logs = bp.logs
        big = bytes(range(256)) * 3000  # 768 kB: stored in several pieces
        logs.write_nowait("r1", "t1", 1, b"\x00\xff\r\n")
        await logs.write_nowait("r1", "t1", 1, big)
        chunks = [item async for item in logs.read("r1", "t1", 1)]
        assert {attempt for attempt, _ in chunks} == {1}
        assert b"".join(chunk for _, chunk in chunks) == b"\x00\xff\r\n" + big

    async def test_a_log_can_be_followed(self, bp: Backplane) -> None:
        logs = bp.logs
        await logs.write_nowait("r1", "t1", 1, b"one")
        follower = asyncio.create_task(take(logs.read("r1", "t1", 1, follow=True), 3))
        await logs.write_nowait("r1", "t1", 2, b"other attempt")
        await logs.write_nowait("r1", "t1", 1, b"two")
        await logs.write_nowait("r1", "t1", 1, b"three")
        assert await follower == [(1, b"one"), (1, b"two"), (1, b"three")]


class TestLogStoreOnMemory(OnMemory, LogStoreContract):
    pass


class TestLogStoreOnNats(OnNats, LogStoreContract):
    pass
