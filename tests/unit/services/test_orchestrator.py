"""The orchestrator on the in-memory backplane (tests.fakes), with a scripted stand-in agent.

Everything here needs only the ports' semantics, which the contract suite checks on the fake and
on NATS alike; what needs a real nats-server (lost-work advisories, restarts of the server) is in
tests/integration/test_orchestrator.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from core import run as run_module
from core.definitions import TaskDef
from core.events import (
    TERMINAL,
    Dispatch,
    RunCancelled,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskFailed,
    TaskQueued,
    TaskSkipped,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    decode_dispatch,
    each_queued,
    msg_id,
    task_ids,
)
from services import orchestrator as orchestrator_module
from services.commands import cancel
from services.orchestrator import CHECKPOINT, Orchestrator
from tests.fakes import MemoryBackplane, MemoryServer
from tests.fakes.work import MemoryWorkQueue
from tests.rolekit import (
    DIAMOND,
    RETRIED,
    Connect,
    defs,
    fetch_one,
    lost_retry_attempt_ends_the_run,
    newer_writers_run_ends,
    queued_attempts,
    running_orchestrator,
    schedule,
    stand_in_agent,
    succeed,
    until_end,
    wait_for_event,
)
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def fast_background_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lease poll of a standby and the checkpoint writer, every 50 ms instead of seconds."""
    monkeypatch.setattr(orchestrator_module, "LEASE_RETRY_S", 0.05)
    monkeypatch.setattr(orchestrator_module, "CHECKPOINT_EVERY_S", 0.05)


# -- running runs -----------------------------------------------------------------------------


async def test_diamond_runs_in_dependency_order(bp: MemoryBackplane, connect: Connect) -> None:
    async with running_orchestrator(connect), stand_in_agent(bp, succeed):
        run_id = await schedule(bp, DIAMOND, "d")
        events = await until_end(bp, run_id)
    order = [task for task, _ in queued_attempts(events)]
    assert order[0] == "a" and sorted(order[1:3]) == ["b", "c"] and order[3] == "d"
    # One TasksQueued per decision: b and c, ready together when a succeeds, in one.
    decisions = [sorted(task_ids(e)) for e in events if isinstance(e, TaskQueued | TasksQueued)]
    assert decisions == [["a"], ["b", "c"], ["d"]]
    assert isinstance(events[-1], RunSucceeded)
    assert sum(isinstance(e, TERMINAL) for e in events) == 1


async def test_failure_skips_dependents_and_fails_the_run(
    bp: MemoryBackplane, connect: Connect
) -> None:
    async def fail_a(d: Dispatch) -> bool:
        return d.task_id != "a"

    async with running_orchestrator(connect), stand_in_agent(bp, fail_a):
        run_id = await schedule(bp, DIAMOND, "d")
        events = await until_end(bp, run_id)
    assert isinstance(events[-1], RunFailed)
    assert {e.task_id for e in events if isinstance(e, TaskSkipped)} == {"b", "c", "d"}
    assert queued_attempts(events) == [("a", 1)]


async def test_a_run_scheduled_by_a_newer_writer_runs_to_the_end(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    async def store(event: RunScheduled, data: bytes) -> None:
        server.inject_event_bytes(event.run_id, data, msg_id(event))

    await newer_writers_run_ends(bp, connect, store)


async def test_each_attempt_has_its_own_dispatch(bp: MemoryBackplane, connect: Connect) -> None:
    """A retry's dispatch reaches the queue: its message id differs from attempt 1's, so the
    work queue does not drop it as a duplicate within its duplicate window."""
    consumer = await bp.work.consumer("default")
    async with running_orchestrator(connect):
        run_id = await schedule(bp, RETRIED, "x")
        first = await fetch_one(consumer)
        assert first.dispatch.attempt == 1
        now = dt.datetime.now(dt.UTC)
        await bp.events.append(
            TaskStarted(run_id=run_id, ts=now, task_id="x", attempt=1, agent_id="s")
        )
        await bp.events.append(
            TaskFailed(run_id=run_id, ts=now, task_id="x", attempt=1, exit_code=1)
        )
        await first.ack()
        await wait_for_event(bp, run_id, lambda e: ("x", 2) in queued_attempts([e]))
        second = await fetch_one(consumer, timeout=5)
    assert (second.dispatch.task_id, second.dispatch.attempt) == ("x", 2)
    assert second.delivery == 1  # a message of its own, not attempt 1's delivered again


@pytest.mark.parametrize(("limit", "ready"), [(3, 7), (None, run_module.QUEUED_PER_EVENT + 1)])
async def test_a_start_with_more_ready_tasks_than_one_event_holds_is_queued_in_several(
    monkeypatch: pytest.MonkeyPatch,
    bp: MemoryBackplane,
    connect: Connect,
    limit: int | None,
    ready: int,
) -> None:
    """The start's decision queues its ready tasks in ceil(ready / QUEUED_PER_EVENT)
    TasksQueued, none over the limit, and sends one dispatch for each attempt of each: every
    task runs once and the run succeeds. (`limit`: the limit as patched, None: the real one.)"""
    if limit is not None:
        monkeypatch.setattr(run_module, "QUEUED_PER_EVENT", limit)
    per_event = run_module.QUEUED_PER_EVENT
    sent: list[tuple[str, int]] = []
    publish = MemoryWorkQueue._publish

    def recording(self: MemoryWorkQueue, queue: str, data: bytes, mid: str) -> int:
        d = decode_dispatch(data)
        sent.append((d.task_id, d.attempt))
        return publish(self, queue, data, mid)

    monkeypatch.setattr(MemoryWorkQueue, "_publish", recording)
    wide = defs(
        *(TaskDef(id=f"t{i}", command="true") for i in range(ready)),
        TaskDef(id="end", command="true", dependencies=tuple(f"t{i}" for i in range(ready))),
    )
    async with running_orchestrator(connect) as orch, stand_in_agent(bp, succeed):
        await eventually(lambda: _true(orch.live), what="the orchestrator to lead")
        run_id = await schedule(bp, wide, "end")
        events = await until_end(bp, run_id, timeout=40)
    assert isinstance(events[-1], RunSucceeded)
    decisions = [e for e in events if isinstance(e, TaskQueued | TasksQueued)]
    assert all(isinstance(e, TasksQueued) for e in decisions)
    start, last = decisions[:-1], decisions[-1]
    assert len(start) == -(-ready // per_event) > 1
    assert all(0 < len(task_ids(e)) <= per_event for e in start)
    assert len({e.ts for e in start}) == 1  # one decision
    starting = sorted(q for e in start for q in queued_attempts([e]))
    assert starting == sorted((f"t{i}", 1) for i in range(ready))
    assert queued_attempts([last]) == [("end", 1)]
    # One dispatch per attempt, each sent once; each task started and succeeded once.
    everything = sorted([*starting, ("end", 1)])
    assert sorted(sent) == everything
    assert sorted((e.task_id, e.attempt) for e in events if isinstance(e, TaskStarted)) == (
        everything
    )
    assert sorted((e.task_id, e.attempt) for e in events if isinstance(e, TaskSucceeded)) == (
        everything
    )


async def test_a_lost_retry_attempt_ends_as_task_lost_for_that_attempt(
    bp: MemoryBackplane, connect: Connect
) -> None:
    await lost_retry_attempt_ends_the_run(bp, connect, ack_wait=0.2, max_deliver=1)


# -- restarts, standbys, checkpoints ----------------------------------------------------------


async def test_a_restarted_orchestrator_resumes_without_queueing_twice(
    bp: MemoryBackplane, connect: Connect
) -> None:
    release_b = asyncio.Event()

    async def hold_b(d: Dispatch) -> bool:
        if d.task_id == "b":
            await release_b.wait()
        return True

    async with stand_in_agent(bp, hold_b):
        async with running_orchestrator(connect):
            run_id = await schedule(bp, DIAMOND, "d")
            await wait_for_event(
                bp, run_id, lambda e: isinstance(e, TaskStarted) and e.task_id == "b"
            )
        # The orchestrator is gone; b finishes meanwhile, then a new one replays and resumes.
        release_b.set()
        await wait_for_event(
            bp, run_id, lambda e: isinstance(e, TaskSucceeded) and e.task_id == "b"
        )
        async with running_orchestrator(connect):
            events = await until_end(bp, run_id)
    assert sorted(queued_attempts(events)) == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    assert isinstance(events[-1], RunSucceeded)


async def test_a_dispatch_that_fails_to_send_is_retried_until_it_is_sent(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    """NATS refusing writes for a while must not strand an attempt whose TasksQueued is stored:
    the orchestrator keeps sending its dispatch (same message id) while the run is open."""
    async with stand_in_agent(bp, succeed), running_orchestrator(connect):
        server.faults.fail_dispatches(5)  # the pipelined send and four retries
        run_id = await schedule(bp, defs(TaskDef(id="x", command="true")), "x")
        events = await until_end(bp, run_id)
    assert server.faults.failing_dispatches == 0
    assert queued_attempts(events) == [("x", 1)]
    assert isinstance(events[-1], RunSucceeded)


async def test_a_restarted_orchestrator_sends_a_dispatch_that_was_stored_but_never_sent(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    """TasksQueued is stored, its dispatch is not (every send fails), and the orchestrator
    dies: the next one sends it again when it goes live."""
    async with stand_in_agent(bp, succeed):
        server.faults.fail_dispatches(1_000_000)  # for as long as the first orchestrator runs
        async with running_orchestrator(connect):
            run_id = await schedule(bp, defs(TaskDef(id="x", command="true")), "x")
            await wait_for_event(bp, run_id, lambda e: isinstance(e, TasksQueued))

            async def dispatches_failed() -> bool | None:
                return True if server.faults.failing_dispatches <= 1_000_000 - 2 else None

            await eventually(dispatches_failed, what="the send and a retry to fail")
        assert not server.work.messages  # nothing for any agent: the attempt is stranded
        server.faults.failing_dispatches = 0
        async with running_orchestrator(connect):
            events = await until_end(bp, run_id)
    assert [(type(e), task_ids(e)) for e in events if each_queued(e)] == [
        (TasksQueued, ("x",))
    ]  # sent again, not queued again
    assert isinstance(events[-1], RunSucceeded)


async def test_a_cancel_requested_while_no_orchestrator_ran_is_announced_by_the_next_one(
    bp: MemoryBackplane, connect: Connect
) -> None:
    """Cancel signals are not stored: a cancel appended while no orchestrator ran reaches the
    agents only because the next orchestrator announces every requested cancel again."""
    never = asyncio.Event()

    async def hold(_: Dispatch) -> bool:
        await never.wait()  # until the stand-in hears the cancellation
        return True

    async with stand_in_agent(bp, hold):
        async with running_orchestrator(connect):
            run_id = await schedule(bp, defs(TaskDef(id="x", command="sleep 300")), "x")
            await wait_for_event(bp, run_id, lambda e: isinstance(e, TaskStarted))
        await cancel(bp.events, run_id, reason="test")  # nobody is there to announce it
        async with running_orchestrator(connect):
            events = await until_end(bp, run_id, timeout=10)
    assert isinstance(events[-1], RunCancelled)


async def test_a_second_orchestrator_stands_by_and_takes_over(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    async with stand_in_agent(bp, succeed):
        first_stop = asyncio.Event()
        first_conn = server.connect("first orchestrator")
        first = Orchestrator(first_conn)
        first_task = asyncio.ensure_future(first.run(first_stop))
        await eventually(lambda: _true(first.live), what="the first orchestrator to lead")
        async with running_orchestrator(connect) as second:
            run_id = await schedule(bp, DIAMOND, "d")
            await until_end(bp, run_id)
            assert not second.live and second.lease_revision == 0  # it never decided
            first_stop.set()
            await first_task  # a graceful stop releases the lease
            await first_conn.close()
            await eventually(lambda: _true(second.live), what="the standby to take over")
            events = await until_end(bp, await schedule(bp, DIAMOND, "d"))
    assert isinstance(events[-1], RunSucceeded)


async def _true(value: bool) -> bool | None:
    return True if value else None


async def test_the_checkpoint_skips_finished_runs_and_holds_at_the_oldest_open_one(
    bp: MemoryBackplane, connect: Connect
) -> None:
    release = asyncio.Event()

    async def hold_x(d: Dispatch) -> bool:
        if d.task_id == "x":  # (by task: the dispatch may arrive before held_run is known)
            await release.wait()
        return True

    async with stand_in_agent(bp, hold_x):
        async with running_orchestrator(connect):
            for _ in range(3):
                await until_end(bp, await schedule(bp, DIAMOND, "d"))
            end = await bp.events.last_seq()

            async def past_finished_runs() -> bool | None:
                return True if (await bp.checkpoints.get(CHECKPOINT) or 0) > end else None

            await eventually(past_finished_runs, what="the checkpoint to pass finished runs")
            held_run = await schedule(bp, defs(TaskDef(id="x", command="true")), "x")
            first_seq = (await bp.events.history(held_run))[0][0]

            async def at_open_run() -> bool | None:
                return True if await bp.checkpoints.get(CHECKPOINT) == first_seq else None

            await eventually(at_open_run, what="the checkpoint to hold at the open run")
        # The orchestrator is gone; the task finishes; a new one starts from the checkpoint.
        release.set()
        async with running_orchestrator(connect) as restarted:
            events = await until_end(bp, held_run)
            assert restarted.first_seq == {} and restarted.seen_seq >= first_seq
    assert isinstance(events[-1], RunSucceeded)
