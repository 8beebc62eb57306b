"""A run id is used once, whoever writes: a RunScheduled published again (without the
expected-sequence check, so the log stores it) re-opens nothing, neither live nor when a
restarted orchestrator meets it in the middle of history (on the in-memory fake)."""

from __future__ import annotations

import asyncio

import pytest

from core.definitions import TaskDef
from core.events import (
    TERMINAL,
    Dispatch,
    RunScheduled,
    RunSucceeded,
    encode,
)
from services import orchestrator as orchestrator_module
from services.orchestrator import CHECKPOINT
from services.ports import Backplane
from tests.fakes import DUPLICATE_WINDOW, MemoryServer
from tests.rolekit import (
    defs,
    queued_attempts,
    running_orchestrator,
    schedule,
    stand_in_agent,
    until_end,
)
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

ONE = defs(TaskDef(id="x", command="true"), TaskDef(id="held", command="true"))


@pytest.fixture(autouse=True)
def fast_background_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrator_module, "LEASE_RETRY_S", 0.05)
    monkeypatch.setattr(orchestrator_module, "CHECKPOINT_EVERY_S", 0.05)


async def test_a_run_scheduled_published_again_reopens_nothing() -> None:
    server = MemoryServer()
    release = asyncio.Event()

    async def hold(d: Dispatch) -> bool:
        if d.task_id == "held":
            await release.wait()
        return True

    async def connect() -> Backplane:
        return server.connect("orchestrator")

    async with server.connect("client") as bp, stand_in_agent(bp, hold):
        async with running_orchestrator(connect) as orch:
            done = await schedule(bp, ONE, "x")
            assert isinstance((await until_end(bp, done))[-1], RunSucceeded)
            held = await schedule(bp, ONE, "held")  # open: the checkpoint stays before...
            [(held_seq, _)] = (await bp.events.history(held))[:1]
            first = (await bp.events.history(done))[0][1]
            assert isinstance(first, RunScheduled)
            # ...a client publishing the finished run's RunScheduled again, without message id
            # or expected sequence: the log stores it.
            again = server.inject_event_bytes(done, encode(first))

            # Live: the orchestrator has read past it once a later run ends.
            await until_end(bp, await schedule(bp, ONE, "x"))
            assert done not in orch.runs

            async def checkpoint_at_held() -> bool | None:
                return True if await bp.checkpoints.get(CHECKPOINT) == held_seq else None

            await eventually(checkpoint_at_held, what="the checkpoint at the open run")

        # Restarted from the checkpoint, it meets the RunScheduled in the middle of history,
        # past the duplicate window (a second TasksQueued would be stored, not deduplicated).
        server.clock.advance(DUPLICATE_WINDOW + 1)
        async with running_orchestrator(connect) as restarted:
            release.set()
            assert isinstance((await until_end(bp, held))[-1], RunSucceeded)
            await until_end(bp, await schedule(bp, ONE, "x"))
            assert done not in restarted.runs
        history = await bp.events.history(done)

    events = [e for _, e in history]
    assert history[-1][0] == again  # nothing was appended after it
    assert sum(isinstance(e, TERMINAL) for e in events) == 1
    assert queued_attempts(events) == [("x", 1)]
