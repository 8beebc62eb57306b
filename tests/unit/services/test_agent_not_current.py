"""An agent does not start an attempt that is no longer current (on the in-memory fake, with
real `sh` commands): a dispatch still in the work queue when its run was cancelled, or a
redelivery of an attempt that already ended, is terminated unrun and gets no result."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.definitions import DagDef, DagTask, Definitions
from core.events import (
    TERMINAL,
    AnyEvent,
    Dispatch,
    QueuedTask,
    RunCancelled,
    RunCancelRequested,
    RunScheduled,
    TaskCancelled,
    TaskFailed,
    TaskQueued,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    each_queued,
)
from services import agent as agent_module
from services import orchestrator as orchestrator_module
from services.agent import Agent, AgentConfig
from services.commands import ScheduleRequest, cancel, schedule
from services.ports import Backplane
from tests.fakes import MemoryServer
from tests.rolekit import running_orchestrator, until_end
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
RESULTS = (TaskSucceeded, TaskFailed, TaskCancelled)


@pytest.fixture(autouse=True)
def fast_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "FETCH_TIMEOUT", 0.05)
    monkeypatch.setattr(orchestrator_module, "LEASE_RETRY_S", 0.05)


@contextlib.asynccontextmanager
async def running_agent(server: MemoryServer, **config: Any) -> AsyncIterator[Agent]:
    conn = server.connect("agent")
    agent = Agent(conn, AgentConfig(guardian=False, **config))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await conn.close()


async def queue_emptied(server: MemoryServer) -> bool | None:
    """Every dispatch settled (acked or terminated), none waiting or in flight."""
    return True if not server.work.messages else None


def marker(tmp_path: Path) -> str:
    return f'echo ran >> "{tmp_path}/ran-$CYCLONETIX_TASK_ID"'


async def test_the_queued_tasks_of_a_cancelled_run_do_not_run(tmp_path: Path) -> None:
    """The issue's case: dispatches still in CX_WORK when their run is cancelled are fetched
    later by an agent, which must not run them nor report anything for them."""
    server = MemoryServer()
    definitions = Definitions(
        dags={
            "three": DagDef(
                id="three", tasks=tuple(DagTask(id=t, command=marker(tmp_path)) for t in "pqr")
            )
        }
    )

    async def connect() -> Backplane:
        return server.connect("orchestrator")

    async with server.connect("client") as bp, running_orchestrator(connect):
        await bp.definitions.put(definitions)
        run_id = (
            await schedule(bp.events, definitions, ScheduleRequest(kind="dag", target="three"))
        ).run_id

        async def all_queued() -> bool | None:
            history = await bp.events.history(run_id)
            return True if sum(len(each_queued(e)) for _, e in history) == 3 else None

        await eventually(all_queued, what="three dispatches waiting for an agent")
        await cancel(bp.events, run_id, reason="test")
        assert isinstance((await until_end(bp, run_id))[-1], RunCancelled)
        assert len(server.work.messages) == 3  # still there: nobody took them

        async with running_agent(server, workdir=tmp_path):
            await eventually(lambda: queue_emptied(server), what="the stale dispatches settled")
        history = [e for _, e in await bp.events.history(run_id)]

    assert not list(tmp_path.glob("ran-*"))  # nothing ran
    assert isinstance(history[-1], RunCancelled)  # nothing after the end: no start, no result
    assert sum(isinstance(e, TERMINAL) for e in history) == 1


SCHEDULED = RunScheduled(run_id="r", ts=NOW, kind="dag", target="d", name="d", graph=())


def queued(attempt: int, *others: str) -> TasksQueued:
    """The orchestrator's decision queueing attempt `attempt` of t (and attempt 1 of `others`)."""
    tasks = [QueuedTask(task_id=t, attempt=1, queue="default") for t in others]
    tasks.append(QueuedTask(task_id="t", attempt=attempt, queue="default"))
    return TasksQueued(run_id="r", ts=NOW, tasks=tuple(tasks))


QUEUED = queued(1)


@pytest.mark.parametrize(
    "before",
    [
        # A redelivery of an attempt whose result is stored (its ack was lost).
        [SCHEDULED, QUEUED, TaskSucceeded(run_id="r", ts=NOW, task_id="t", attempt=1)],
        # Attempt 1 was lost and attempt 2 queued: attempt 1's dispatch comes again.
        [SCHEDULED, QUEUED, queued(2)],
        # The same, attempt 2 queued with other tasks in one decision.
        [SCHEDULED, QUEUED, queued(2, "o1", "o2")],
        # The same in an older log, where each queued attempt was a TaskQueued of its own.
        [
            SCHEDULED,
            TaskQueued(run_id="r", ts=NOW, task_id="t", attempt=1, queue="default"),
            TaskQueued(run_id="r", ts=NOW, task_id="t", attempt=2, queue="default"),
        ],
        # A queued attempt the orchestrator cancelled.
        [SCHEDULED, QUEUED, TaskCancelled(run_id="r", ts=NOW, task_id="t", attempt=1)],
    ],
    ids=[
        "already-succeeded",
        "superseded",
        "superseded-with-others",
        "superseded-in-an-older-log",
        "cancelled-attempt",
    ],
)
async def test_a_stale_dispatch_is_terminated_unrun(tmp_path: Path, before: list[AnyEvent]) -> None:
    server = MemoryServer()
    async with server.connect("client") as bp, running_agent(server, workdir=tmp_path):
        for event in before:
            await bp.events.append(event)
        await bp.work.dispatch(
            Dispatch(run_id="r", task_id="t", attempt=1, queue="default", command=marker(tmp_path))
        )
        await eventually(lambda: queue_emptied(server), what="the dispatch settled")
        history = [e for _, e in await bp.events.history("r")]
    assert not list(tmp_path.glob("ran-*"))
    assert not any(isinstance(e, RESULTS) for e in history[len(before) :])


def started_by(agent_id: str, delivery: int = 1) -> TaskStarted:
    return TaskStarted(
        run_id="r", ts=NOW, task_id="t", attempt=1, agent_id=agent_id, delivery=delivery
    )


async def handed_back_once(bp: Backplane) -> None:
    """Deliver the queue's dispatch once and hand it back: the agent gets delivery 2."""
    consumer = await bp.work.consumer("default")
    [item] = await consumer.fetch(1, timeout=1)
    await item.nak()
    await consumer.close()


@pytest.mark.parametrize(
    "before",
    [
        [SCHEDULED, QUEUED],
        # A redelivery: the agent that started delivery 1 handed it back or died.
        [SCHEDULED, QUEUED, started_by("x", delivery=1)],
    ],
    ids=["queued", "redelivered"],
)
async def test_a_current_dispatch_runs(tmp_path: Path, before: list[AnyEvent]) -> None:
    server = MemoryServer()
    async with server.connect("client") as bp:
        for event in before:
            await bp.events.append(event)
        await bp.work.dispatch(
            Dispatch(run_id="r", task_id="t", attempt=1, queue="default", command=marker(tmp_path))
        )
        if len(before) > 2:
            await handed_back_once(bp)
        async with running_agent(server, workdir=tmp_path):
            await eventually(lambda: queue_emptied(server), what="the dispatch settled")
        history = [e for _, e in await bp.events.history("r")]
    assert (tmp_path / "ran-t").read_text() == "ran\n"
    assert [type(e) for e in history[len(before) :]] == [
        TaskStarted,
        TaskSucceeded,
    ]  # (one start: same id)


async def test_a_delivery_another_agent_holds_is_left_to_it(tmp_path: Path) -> None:
    """A restarted nats-server that lost its consumer's state hands a delivery out again with
    the same delivery count: the agent finds the holder's start of that very delivery, runs
    nothing, appends nothing, and does not settle the message (the holder acks it)."""
    server = MemoryServer()
    async with server.connect("client") as bp:
        for event in (SCHEDULED, QUEUED, started_by("holder", delivery=1)):
            await bp.events.append(event)
        await bp.work.dispatch(
            Dispatch(run_id="r", task_id="t", attempt=1, queue="default", command=marker(tmp_path))
        )
        async with running_agent(server, workdir=tmp_path) as agent:

            async def let_go() -> bool | None:
                shared = server.work.consumers.get("default")
                delivered = shared is not None and shared.deliveries.get(1) == 1
                return True if delivered and not agent.running else None

            await eventually(let_go, what="delivery 1 taken and let go")
        history = [e for _, e in await bp.events.history("r")]
    assert not list(tmp_path.glob("ran-*"))
    assert history == [SCHEDULED, QUEUED, started_by("holder", delivery=1)]
    assert server.work.messages  # not terminated: still the holder's to settle


async def test_a_cancellation_between_the_read_and_the_start_wins(tmp_path: Path) -> None:
    """The run's cancellation is stored after the agent read the newest event and before its
    start: the conditional append conflicts, the agent judges again and runs nothing."""
    server = MemoryServer()
    async with server.connect("client") as bp:
        for event in (SCHEDULED, QUEUED):
            await bp.events.append(event)
        await bp.work.dispatch(
            Dispatch(run_id="r", task_id="t", attempt=1, queue="default", command=marker(tmp_path))
        )
        async with running_agent(server, workdir=tmp_path) as agent:
            events = agent.backplane.events
            read = events.last_event

            async def read_then_cancel(run_id: str) -> tuple[int, AnyEvent] | None:
                newest = await read(run_id)
                if not cancelled:
                    cancelled.append(await cancel(bp.events, run_id, reason="test"))
                return newest

            cancelled: list[object] = []
            events.last_event = read_then_cancel  # type: ignore[method-assign]
            await eventually(lambda: queue_emptied(server), what="the dispatch settled")
        history = [e for _, e in await bp.events.history("r")]
    assert not list(tmp_path.glob("ran-*"))
    assert not any(isinstance(e, TaskStarted | TaskSucceeded) for e in history)


async def test_a_cancelled_run_waits_for_a_start_that_landed_after_its_cancellation(
    tmp_path: Path,
) -> None:
    """The chaos suite's case: the orchestrator cancelled a queued attempt, other events hid
    that from an agent, and the agent's start landed after it. The run stays open until that
    attempt reports (the orchestrator announces the cancellation again, so its agent kills it),
    and nothing is stored after the run's end."""
    server = MemoryServer()
    definitions = Definitions(
        dags={
            "pair": DagDef(
                id="pair",
                tasks=(DagTask(id="held", command="true"), DagTask(id="late", command="true")),
            )
        }
    )

    async def connect() -> Backplane:
        return server.connect("orchestrator")

    async with server.connect("client") as bp, running_orchestrator(connect):
        announced: list[str] = []

        async def listen() -> None:
            async for run_id in bp.cancels.listen():
                announced.append(run_id)

        listening = asyncio.create_task(listen())

        async def announcements(more_than: int) -> bool | None:
            return True if len(announced) > more_than else None

        await bp.definitions.put(definitions)
        run_id = (
            await schedule(bp.events, definitions, ScheduleRequest(kind="dag", target="pair"))
        ).run_id

        async def queued_attempt(task_id: str) -> TaskQueued | None:
            for _, e in await bp.events.history(run_id):
                for q in each_queued(e):
                    if q.task_id == task_id:
                        return q
            return None

        held = await eventually(lambda: queued_attempt("held"), what="held queued")
        late = await eventually(lambda: queued_attempt("late"), what="late queued")
        # `held` runs (its agent is slow), so the cancelled run waits for it.
        await bp.events.append(
            TaskStarted(run_id=run_id, ts=NOW, task_id="held", attempt=1, agent_id="slow")
        )
        await cancel(bp.events, run_id, reason="test")

        async def late_cancelled() -> bool | None:
            return (
                True
                if any(
                    isinstance(e, TaskCancelled) and e.task_id == "late"
                    for _, e in await bp.events.history(run_id)
                )
                else None
            )

        await eventually(late_cancelled, what="the queued attempt cancelled")
        await eventually(lambda: announcements(0), what="the cancellation announced")
        before = len(announced)
        # The late start, and the slow task's end: the run must not end yet.
        await bp.events.append(
            TaskStarted(
                run_id=run_id,
                ts=dt.datetime.now(dt.UTC),
                task_id="late",
                attempt=late.attempt,
                agent_id="hidden",
            )
        )
        await eventually(lambda: announcements(before), what="announced again")
        await bp.events.append(
            TaskSucceeded(
                run_id=run_id, ts=NOW, task_id="held", attempt=held.attempt, agent_id="slow"
            )
        )
        with pytest.raises(TimeoutError):
            await until_end(bp, run_id, timeout=0.5)
        # Its agent killed it on the announcement: the report lets the run end.
        await bp.events.append(
            TaskCancelled(
                run_id=run_id, ts=NOW, task_id="late", attempt=late.attempt, agent_id="hidden"
            )
        )
        history = await until_end(bp, run_id)
        listening.cancel()

    assert isinstance(history[-1], RunCancelled)
    assert [type(e).__name__ for e in history[-2:]] == ["TaskCancelled", "RunCancelled"]


async def test_a_redelivery_of_a_run_being_cancelled_reports_its_attempt_cancelled(
    tmp_path: Path,
) -> None:
    """The agent that started the attempt died while the run was being cancelled; the next
    delivery is not run, but reported cancelled: nobody else would end that attempt."""
    server = MemoryServer()
    async with server.connect("client") as bp:
        for event in (
            SCHEDULED,
            QUEUED,
            started_by("dead", delivery=1),
            RunCancelRequested(run_id="r", ts=NOW),
        ):
            await bp.events.append(event)
        await bp.work.dispatch(
            Dispatch(run_id="r", task_id="t", attempt=1, queue="default", command=marker(tmp_path))
        )
        await handed_back_once(bp)
        async with running_agent(server, workdir=tmp_path) as agent:
            await eventually(lambda: queue_emptied(server), what="the dispatch settled")
        history = [e for _, e in await bp.events.history("r")]
    assert not list(tmp_path.glob("ran-*"))
    assert history[-1] == TaskCancelled(
        run_id="r", ts=history[-1].ts, task_id="t", attempt=1, agent_id=agent.id
    )


async def test_a_dispatch_of_a_run_whose_cancellation_was_announced_does_not_start(
    tmp_path: Path,
) -> None:
    """The run's newest event does not tell (other tasks' events came after its cancellation),
    but the agent heard the announcement: it starts nothing of that run."""
    server = MemoryServer()
    async with server.connect("client") as bp:
        for event in (SCHEDULED, QUEUED):
            await bp.events.append(event)
        async with running_agent(server, workdir=tmp_path) as agent:

            async def heard() -> bool | None:
                await bp.cancels.announce("r")
                return True if "r" in agent._cancelled_runs else None

            await eventually(heard, what="the announcement heard")
            await bp.work.dispatch(
                Dispatch(
                    run_id="r", task_id="t", attempt=1, queue="default", command=marker(tmp_path)
                )
            )
            await eventually(lambda: queue_emptied(server), what="the dispatch settled")
        history = [e for _, e in await bp.events.history("r")]
    assert not list(tmp_path.glob("ran-*"))
    assert history == [SCHEDULED, QUEUED]
