"""An execution is always recorded: the agent runs a command only once its TaskStarted is
stored (on the in-memory backplane, whose faults make an append fail)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.events import Dispatch, TaskStarted, TaskSucceeded
from services.agent import Agent, AgentConfig
from tests.fakes import MemoryServer
from tests.waiting import eventually


async def test_a_start_that_cannot_be_stored_runs_nothing_and_hands_the_dispatch_back(
    tmp_path: Path,
) -> None:
    server = MemoryServer()
    backplane = server.connect("agent")
    agent = Agent(backplane, AgentConfig(workdir=tmp_path, ack_wait=30.0))
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    try:
        server.faults.fail_appends(1)  # the first TaskStarted is never stored
        count = tmp_path / "count"
        command = f"echo x >> {count}; echo done"
        await backplane.work.dispatch(
            Dispatch(run_id="r1", task_id="t", attempt=1, queue="default", command=command)
        )

        async def finished() -> TaskSucceeded | None:
            for _, event in await backplane.events.history("r1"):
                if isinstance(event, TaskSucceeded):
                    return event
            return None

        done = await eventually(finished, timeout=10, what="the handed-back dispatch to succeed")
        history = [e for _, e in await backplane.events.history("r1")]
        starts = [e for e in history if isinstance(e, TaskStarted)]
        assert [s.delivery for s in starts] == [2]  # the first delivery left no start: no run
        assert count.read_text() == "x\n"  # ran exactly once, after its start was stored
        assert done.output_tail == "done\n"
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await backplane.close()
