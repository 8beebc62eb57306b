"""A run's end is the last event of its run: nothing the orchestrator decided earlier lands
after it, even when that decision's append had to be retried (seen in the chaos suite: a
`TaskQueued` retried through a stream leader election landed after `RunSucceeded`)."""

from __future__ import annotations

import pytest

from core.definitions import Definitions, TaskDef
from core.events import TERMINAL, RunSucceeded, TaskQueued
from services import orchestrator as orchestrator_module
from tests.fakes import MemoryBackplane, MemoryServer
from tests.rolekit import Connect, plan, running_orchestrator, stand_in_agent, until_end

pytestmark = pytest.mark.timeout(60)


async def test_the_end_waits_for_the_runs_own_decisions_still_being_retried(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The TaskQueued append fails and is retried for a while; its dispatch went out at once,
    # so the task runs and succeeds before the TaskQueued is stored.
    monkeypatch.setattr(orchestrator_module, "RETRY_FIRST_S", 0.25)
    definitions = Definitions(tasks={"only": TaskDef(id="only", command="true")})
    async with running_orchestrator(connect), stand_in_agent(bp):
        await bp.definitions.put(definitions)
        scheduled = plan(definitions, "only")
        await bp.events.schedule_run(scheduled)
        # The orchestrator's next appends (its TaskQueued, then retries of it) fail for ~0.7 s.
        server.faults.fail_appends(3, connection="orchestrator")
        events = await until_end(bp, scheduled.run_id)
    assert server.faults.failing_appends == 0  # the faults did hit the appends
    assert isinstance(events[-1], RunSucceeded)
    assert sum(isinstance(e, TERMINAL) for e in events) == 1
    assert any(isinstance(e, TaskQueued) for e in events[:-1])
