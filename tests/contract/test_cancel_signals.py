"""The cancel signals' contract: announcements reach every listener that is listening; they
are not stored."""

from __future__ import annotations

import asyncio

from services.ports import Backplane
from tests.contract.harness import Contract, Harness, OnMemory, OnNats
from tests.waiting import eventually


class CancelSignalsContract(Contract):
    async def test_every_listener_hears_announcements_not_earlier_ones(
        self, bp: Backplane, harness: Harness
    ) -> None:
        await bp.cancels.announce("before-anyone-listened")
        other = await harness.connect("agent-2")
        heard: dict[str, list[str]] = {"here": [], "other": []}

        async def listen(name: str, source: Backplane) -> None:
            async for run_id in source.cancels.listen():
                heard[name].append(run_id)

        listeners = [
            asyncio.create_task(listen("here", bp)),
            asyncio.create_task(listen("other", other)),
        ]

        # A listener hears only what is announced once it listens: announce until both do.
        async def both_hear() -> bool | None:
            await bp.cancels.announce("r1")
            return True if all("r1" in runs for runs in heard.values()) else None

        await eventually(both_hear, timeout=10, what="both listeners to hear r1")
        # Any connection may announce. (No order across connections: a late "r1" from `bp`
        # may still arrive after this.)
        await other.cancels.announce("run-two")
        await eventually(
            lambda: _true(all("run-two" in runs for runs in heard.values())),
            timeout=10,
            what="both listeners to hear run-two",
        )
        for runs in heard.values():
            assert "before-anyone-listened" not in runs
            assert set(runs) == {"r1", "run-two"}
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)

    async def test_closing_ends_listening(self, bp: Backplane) -> None:
        heard: list[str] = []

        async def listen() -> None:
            async for run_id in bp.cancels.listen():
                heard.append(run_id)

        listener = asyncio.create_task(listen())

        async def listening() -> bool | None:
            await bp.cancels.announce("r1")
            return True if heard else None

        await eventually(listening, timeout=10, what="the listener to hear r1")
        await bp.close()
        await asyncio.wait_for(listener, 10)  # ended by itself
        assert set(heard) == {"r1"}


async def _true(condition: bool) -> bool | None:
    return True if condition else None


class TestCancelSignalsOnMemory(OnMemory, CancelSignalsContract):
    pass


class TestCancelSignalsOnNats(OnNats, CancelSignalsContract):
    pass
