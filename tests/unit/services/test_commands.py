"""The command layer (schedule, cancel, rerun, load_run) over the in-memory ports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from core.definitions import Definitions, TaskDef
from core.errors import Conflict, Invalid, NotFound
from core.events import (
    RunCancelRequested,
    RunScheduled,
    RunSucceeded,
    TaskFailed,
    TaskSucceeded,
)
from core.run import advance
from services import commands
from services.commands import ScheduleRequest
from services.ports import RunExists
from tests.fakes import MemoryBackplane

DEFS = Definitions(
    tasks={
        "a": TaskDef(id="a", command="echo a"),
        "b": TaskDef(id="b", command="echo b", dependencies=("a",)),
        "c": TaskDef(id="c", command="echo c", dependencies=("b",)),
        "side": TaskDef(id="side", command="echo side", dependencies=("a",)),
        "top": TaskDef(id="top", command="echo top", dependencies=("c", "side")),
    }
)


@pytest.fixture
async def ports() -> AsyncIterator[MemoryBackplane]:
    backplane = MemoryBackplane()
    try:
        yield backplane
    finally:
        await backplane.close()


async def test_schedule_appends_the_planned_run_against_published_definitions(
    ports: MemoryBackplane,
) -> None:
    await ports.definitions.put(DEFS)
    done = await commands.schedule(
        ports.events, ports.definitions, ScheduleRequest(kind="outcome", target="c", run_id="r1")
    )
    assert (done.run_id, done.tasks) == ("r1", 3)
    [(seq, event)] = await ports.events.history("r1")
    assert seq == done.seq and isinstance(event, RunScheduled)
    assert [n.id for n in event.graph] == ["a", "b", "c"]


async def test_schedule_refuses_bad_requests_and_appends_nothing(ports: MemoryBackplane) -> None:
    with pytest.raises(Invalid, match="no definitions published"):
        await commands.schedule(
            ports.events, ports.definitions, ScheduleRequest(kind="dag", target="x")
        )
    with pytest.raises(Invalid, match="unknown task 'nope'"):
        await commands.schedule(ports.events, DEFS, ScheduleRequest(kind="outcome", target="nope"))
    with pytest.raises(Invalid, match="invalid --param"):
        await commands.schedule(
            ports.events, DEFS, ScheduleRequest(kind="outcome", target="a", params=("oops",))
        )
    with pytest.raises(Invalid, match="invalid run id"):
        await commands.schedule(
            ports.events, DEFS, ScheduleRequest(kind="outcome", target="a", run_id="-x")
        )
    assert await ports.events.last_seq() == 0


async def test_a_run_id_is_used_once(ports: MemoryBackplane) -> None:
    request = ScheduleRequest(kind="outcome", target="a", run_id="once")
    await commands.schedule(ports.events, DEFS, request)
    with pytest.raises(RunExists, match="'once' is already taken") as caught:
        await commands.schedule(ports.events, DEFS, request)
    assert isinstance(caught.value, Conflict)


async def test_cancel_appends_a_request_and_refuses_unknown_or_ended_runs(
    ports: MemoryBackplane,
) -> None:
    with pytest.raises(NotFound, match="no run 'ghost'"):
        await commands.cancel(ports.events, "ghost")
    await commands.schedule(
        ports.events, DEFS, ScheduleRequest(kind="outcome", target="a", run_id="r")
    )
    done = await commands.cancel(ports.events, "r", reason="because", by="ann")
    last = (await ports.events.history("r"))[-1]
    assert last[0] == done.seq
    assert isinstance(last[1], RunCancelRequested)
    assert (last[1].reason, last[1].by) == ("because", "ann")

    await commands.schedule(
        ports.events, DEFS, ScheduleRequest(kind="outcome", target="a", run_id="e")
    )
    scheduled = (await ports.events.history("e"))[0][1]
    await ports.events.append(RunSucceeded(run_id="e", ts=scheduled.ts))
    with pytest.raises(Conflict, match="already ended succeeded"):
        await commands.cancel(ports.events, "e")


async def test_rerun_repeats_the_snapshot_not_todays_definitions(ports: MemoryBackplane) -> None:
    await commands.schedule(
        ports.events, DEFS, ScheduleRequest(kind="outcome", target="c", run_id="r")
    )
    again = await commands.rerun(ports.events, "r", run_as="r2")
    original = (await ports.events.history("r"))[0][1]
    assert isinstance(original, RunScheduled)
    assert again.event.graph == original.graph
    assert (again.event.kind, again.event.target, again.event.trigger) == ("outcome", "c", "rerun")
    assert (again.event.rerun_of, original.rerun_of) == ("r", None)
    assert (await ports.events.history("r2"))[0][0] == again.seq
    assert len(await ports.events.history("r")) == 1  # the earlier run's history is untouched


async def test_rerun_from_a_task_takes_it_and_everything_downstream(ports: MemoryBackplane) -> None:
    await commands.schedule(
        ports.events, DEFS, ScheduleRequest(kind="outcome", target="top", run_id="r")
    )
    scheduled = (await ports.events.history("r"))[0][1]
    await ports.events.append(TaskSucceeded(run_id="r", ts=scheduled.ts, task_id="a", attempt=1))
    again = await commands.rerun(ports.events, "r", from_task="b")
    nodes = {n.id: n.dependencies for n in again.event.graph}
    # b, c and top run again; a and side are outside (their edges into the set are dropped).
    assert nodes == {"b": (), "c": ("b",), "top": ("c",)}
    assert again.run_id.startswith("top-")


async def test_rerun_refuses_unknown_runs_tasks_and_taken_ids(ports: MemoryBackplane) -> None:
    with pytest.raises(NotFound, match="no run 'ghost'"):
        await commands.rerun(ports.events, "ghost")
    await commands.schedule(
        ports.events, DEFS, ScheduleRequest(kind="outcome", target="b", run_id="r")
    )
    with pytest.raises(NotFound, match="has no task 'zzz'"):
        await commands.rerun(ports.events, "r", from_task="zzz")
    with pytest.raises(RunExists):
        await commands.rerun(ports.events, "r", run_as="r")
    with pytest.raises(Invalid, match="invalid run id"):
        await commands.rerun(ports.events, "r", run_as="bad id")


async def test_rerun_from_failure_runs_what_did_not_succeed_and_reuses_the_rest(
    ports: MemoryBackplane,
) -> None:
    await run_through(ports, "top", {"a": 0, "side": 0, "b": 1})
    state = await commands.load_run(ports.events, "r")
    assert state.status == "failed"
    assert {t: s.status for t, s in state.tasks.items()} == {
        "a": "succeeded",
        "side": "succeeded",
        "b": "failed",
        "c": "skipped",
        "top": "skipped",
    }
    again = await commands.rerun(ports.events, "r", from_failure=True, run_as="r2")
    # b failed, c and top were skipped; a and side succeeded: their results are reused.
    assert {n.id: n.dependencies for n in again.event.graph} == {
        "b": (),
        "c": ("b",),
        "top": ("c",),
    }
    assert (again.run_id, again.tasks, again.event.rerun_of) == ("r2", 3, "r")
    with pytest.raises(Invalid, match="not both"):
        await commands.rerun(ports.events, "r", from_task="b", from_failure=True)


async def test_rerun_from_failure_of_a_run_that_succeeded_is_refused(
    ports: MemoryBackplane,
) -> None:
    await run_through(ports, "a", {"a": 0})
    assert (await commands.load_run(ports.events, "r")).status == "succeeded"
    with pytest.raises(Invalid, match="nothing to rerun from failure: all its 1 tasks succeeded"):
        await commands.rerun(ports.events, "r", from_failure=True)
    assert await ports.events.history("r2") == []


async def run_through(ports: MemoryBackplane, target: str, exits: dict[str, int]) -> None:
    """Run `r`, an outcome of `target`: each task of `exits` in turn ends its first attempt
    with that exit code, and the orchestrator decides after each."""
    await commands.schedule(
        ports.events, DEFS, ScheduleRequest(kind="outcome", target=target, run_id="r")
    )
    ts = (await ports.events.history("r"))[0][1].ts
    await settle(ports, "r")
    for task_id, code in exits.items():
        if code == 0:
            await ports.events.append(TaskSucceeded(run_id="r", ts=ts, task_id=task_id, attempt=1))
        else:
            await ports.events.append(
                TaskFailed(run_id="r", ts=ts, task_id=task_id, attempt=1, exit_code=code)
            )
        await settle(ports, "r")


async def settle(ports: MemoryBackplane, run_id: str) -> None:
    """Append what the orchestrator would decide about the run now, until it decides nothing."""
    while True:
        state = await commands.load_run(ports.events, run_id)
        decisions = advance(state, state.scheduled_at)
        if not decisions:
            return
        for event in decisions:
            await ports.events.append(event)
