"""A run's end is the last event of its run: nothing the orchestrator decided earlier lands
after it, even when that decision's append had to be retried (seen in the chaos suite: a
`TasksQueued` retried through a stream leader election landed after `RunSucceeded`)."""

from __future__ import annotations

import datetime as dt

import pytest

from core.definitions import Definitions, TaskDef
from core.errors import Unavailable
from core.events import (
    TERMINAL,
    AnyEvent,
    RunCancelled,
    RunSucceeded,
    TasksQueued,
    TaskSucceeded,
)
from services import orchestrator as orchestrator_module
from services.commands import cancel
from tests.fakes import MemoryBackplane, MemoryServer
from tests.rolekit import (
    Connect,
    history,
    plan,
    queued_attempts,
    running_orchestrator,
    stand_in_agent,
    until_end,
)
from tests.waiting import eventually

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

pytestmark = pytest.mark.timeout(60)


async def test_the_end_waits_for_the_runs_own_decisions_still_being_retried(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The TasksQueued append fails and is retried for a while; its dispatch went out at once,
    # so the task runs and succeeds before the TasksQueued is stored.
    monkeypatch.setattr(orchestrator_module, "RETRY_FIRST_S", 0.25)
    definitions = Definitions(tasks={"only": TaskDef(id="only", command="true")})
    async with running_orchestrator(connect), stand_in_agent(bp):
        await bp.definitions.put(definitions)
        scheduled = plan(definitions, "only")
        await bp.events.schedule_run(scheduled)
        # The orchestrator's next appends (its TasksQueued, then retries of it) fail for ~0.7 s.
        server.faults.fail_appends(3, connection="orchestrator")
        events = await until_end(bp, scheduled.run_id)
    assert server.faults.failing_appends == 0  # the faults did hit the appends
    assert isinstance(events[-1], RunSucceeded)
    assert sum(isinstance(e, TERMINAL) for e in events) == 1
    assert any(isinstance(e, TasksQueued) for e in events[:-1])


async def test_a_racing_decision_that_conflicts_is_made_again_even_with_nothing_new_to_fold(
    bp: MemoryBackplane, connect: Connect
) -> None:
    """Seen in the chaos suite: the conflicting event had been folded already (the
    orchestrator's own skip, stored while it appended a racing cancel), so no later event
    would wake the run up again; it stayed open forever."""
    definitions = Definitions(
        tasks={t: TaskDef(id=t, command="true") for t in ("a", "b")}
        | {"end": TaskDef(id="end", command="true", dependencies=("a", "b"))}
    )
    async with running_orchestrator(connect) as orch:
        real = orch.events.append_expected
        interfered: list[int] = []

        async def append_after_someone_else(event: AnyEvent, expected: int) -> int:
            if not interfered:  # once: an event lands (and is folded) before ours
                noise = TaskSucceeded(run_id=event.run_id, ts=T0, task_id="a", attempt=0)
                interfered.append(await bp.events.append(noise))

                async def folded() -> bool | None:
                    return True if orch.last_seq.get(event.run_id, 0) >= interfered[0] else None

                await eventually(folded, what="the other event folded")
            return await real(event, expected)

        orch.events.append_expected = append_after_someone_else  # type: ignore[method-assign]
        await bp.definitions.put(definitions)
        scheduled = plan(definitions, "end")
        await bp.events.schedule_run(scheduled)

        async def both_queued() -> bool | None:
            queued = queued_attempts(await history(bp, scheduled.run_id))
            return True if sorted(queued) == [("a", 1), ("b", 1)] else None

        await eventually(both_queued, what="a and b queued")
        await cancel(bp.events, scheduled.run_id, reason="test")
        events = await until_end(bp, scheduled.run_id)
    assert interfered
    assert isinstance(events[-1], RunCancelled)


class _Rejected(Exception):
    """A rejection the event log's adapter does not translate (seen in the chaos suite: the
    clustered server's "wrong last sequence" with an error code the adapter did not know)."""


@pytest.mark.parametrize("error", [Unavailable("NATS away"), _Rejected("code=400")])
async def test_a_racing_end_whose_append_fails_is_decided_again(
    bp: MemoryBackplane,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    """Seen in the chaos suite: the run's end failed to append with an error that was not a
    conflict; the racing append died in the background and the run never ended."""
    monkeypatch.setattr(orchestrator_module, "RACING_RETRY_S", 0.05)
    definitions = Definitions(tasks={"only": TaskDef(id="only", command="true")})
    async with running_orchestrator(connect) as orch, stand_in_agent(bp):
        real = orch.events.append_expected
        failed: list[AnyEvent] = []

        async def fail_once(event: AnyEvent, expected: int) -> int:
            if not failed:
                failed.append(event)
                raise error
            return await real(event, expected)

        orch.events.append_expected = fail_once  # type: ignore[method-assign]
        await bp.definitions.put(definitions)
        scheduled = plan(definitions, "only")
        await bp.events.schedule_run(scheduled)
        events = await until_end(bp, scheduled.run_id)
    assert [type(e) for e in failed] == [RunSucceeded]
    assert isinstance(events[-1], RunSucceeded)
    assert sum(isinstance(e, TERMINAL) for e in events) == 1
