"""The orchestrator against a real nats-server, with a scripted stand-in for the agents.

The stand-in only answers dispatches (the real agent has its own tests and the end-to-end tests
run both as processes); what is checked here is what the orchestrator appends and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from core.definitions import Definitions, TaskDef
from core.events import (
    TERMINAL,
    AnyEvent,
    Dispatch,
    RunFailed,
    RunSucceeded,
    TaskFailed,
    TaskLost,
    TaskQueued,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from core.scheduling import plan_run
from services.nats import NatsBackplane, connect
from services.orchestrator import CHECKPOINT, Orchestrator
from tests.waiting import eventually

pytestmark = pytest.mark.integration

Answer = Callable[[Dispatch], Awaitable[bool]]  # True: succeed, False: fail


def defs(*tasks: TaskDef) -> Definitions:
    return Definitions(tasks={t.id: t for t in tasks})


DIAMOND = defs(
    TaskDef(id="a", command="true"),
    TaskDef(id="b", command="true", dependencies=("a",)),
    TaskDef(id="c", command="true", dependencies=("a",)),
    TaskDef(id="d", command="true", dependencies=("b", "c")),
)


@contextlib.asynccontextmanager
async def orchestrator(backplane: NatsBackplane) -> AsyncIterator[Orchestrator]:
    """An orchestrator with its own connection, as in its own process; stopped gracefully."""
    own = await connect(backplane.url, name="orchestrator")
    stop = asyncio.Event()
    orch = Orchestrator(own)
    task = asyncio.ensure_future(orch.run(stop))
    try:
        yield orch
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        finally:
            await own.close()


@contextlib.asynccontextmanager
async def stand_in_agent(
    backplane: NatsBackplane, answer: Answer, queue: str = "default"
) -> AsyncIterator[None]:
    consumer = await backplane.work.consumer(queue)

    async def loop() -> None:
        while True:
            for item in await consumer.fetch(8, timeout=0.5):
                d = item.dispatch
                run, task, attempt = d.run_id, d.task_id, d.attempt
                now = dt.datetime.now(dt.UTC)
                await backplane.events.append(
                    TaskStarted(run_id=run, ts=now, task_id=task, attempt=attempt, agent_id="x")
                )
                ok = await answer(d)
                now = dt.datetime.now(dt.UTC)
                await backplane.events.append(
                    TaskSucceeded(run_id=run, ts=now, task_id=task, attempt=attempt)
                    if ok
                    else TaskFailed(run_id=run, ts=now, task_id=task, attempt=attempt, exit_code=1)
                )
                await item.ack()

    task = asyncio.ensure_future(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.close()


async def schedule(backplane: NatsBackplane, definitions: Definitions, target: str) -> str:
    await backplane.definitions.put(definitions)
    event = plan_run(
        definitions,
        kind="outcome",
        target=target,
        now=dt.datetime.now(dt.UTC),
        entropy=os.urandom(16),
    )
    await backplane.events.schedule_run(event)
    return event.run_id


async def until_end(backplane: NatsBackplane, run_id: str, timeout: float = 20) -> list[AnyEvent]:
    async with asyncio.timeout(timeout):
        async for _seq, event in backplane.events.follow_run(run_id):
            if isinstance(event, TERMINAL):
                break
    return [e for _, e in await backplane.events.history(run_id)]


async def succeed(_: Dispatch) -> bool:
    return True


async def test_diamond_runs_in_dependency_order(backplane: NatsBackplane) -> None:
    async with orchestrator(backplane), stand_in_agent(backplane, succeed):
        run_id = await schedule(backplane, DIAMOND, "d")
        events = await until_end(backplane, run_id)
    order = [e.task_id for e in events if isinstance(e, TaskQueued)]
    assert order[0] == "a" and sorted(order[1:3]) == ["b", "c"] and order[3] == "d"
    assert isinstance(events[-1], RunSucceeded)
    assert sum(isinstance(e, TERMINAL) for e in events) == 1


async def test_failure_skips_dependents_and_fails_the_run(backplane: NatsBackplane) -> None:
    async def fail_a(d: Dispatch) -> bool:
        return d.task_id != "a"

    async with orchestrator(backplane), stand_in_agent(backplane, fail_a):
        run_id = await schedule(backplane, DIAMOND, "d")
        events = await until_end(backplane, run_id)
    assert isinstance(events[-1], RunFailed)
    assert {e.task_id for e in events if isinstance(e, TaskSkipped)} == {"b", "c", "d"}
    assert not any(isinstance(e, TaskQueued) and e.task_id != "a" for e in events)


async def test_a_restarted_orchestrator_resumes_without_queueing_twice(
    backplane: NatsBackplane,
) -> None:
    release_b = asyncio.Event()

    async def hold_b(d: Dispatch) -> bool:
        if d.task_id == "b":
            await release_b.wait()
        return True

    async with stand_in_agent(backplane, hold_b):
        async with orchestrator(backplane):
            run_id = await schedule(backplane, DIAMOND, "d")
            await wait_for_event(
                backplane, run_id, lambda e: isinstance(e, TaskStarted) and e.task_id == "b"
            )
        # The orchestrator is gone; b finishes meanwhile, then a new one replays and resumes.
        release_b.set()
        await wait_for_event(
            backplane, run_id, lambda e: isinstance(e, TaskSucceeded) and e.task_id == "b"
        )
        async with orchestrator(backplane):
            events = await until_end(backplane, run_id)
    queued = [(e.task_id, e.attempt) for e in events if isinstance(e, TaskQueued)]
    assert sorted(queued) == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    assert isinstance(events[-1], RunSucceeded)


async def test_an_attempt_nobody_finishes_is_lost_not_stranded(backplane: NatsBackplane) -> None:
    await backplane.definitions.put(defs(TaskDef(id="x", command="true")))
    # A consumer whose deliveries run out fast; the "agent" takes the message and never acks.
    consumer = await backplane.work.consumer("default", ack_wait=0.3, max_deliver=2)
    async with orchestrator(backplane):
        run_id = await schedule(backplane, defs(TaskDef(id="x", command="true")), "x")
        deadline = time.monotonic() + 15
        history: list[AnyEvent] = []
        while time.monotonic() < deadline:
            await consumer.fetch(1, timeout=0.5)  # never acked
            history = [e for _, e in await backplane.events.history(run_id)]
            if any(isinstance(e, TERMINAL) for e in history):
                break
        await consumer.close()
    assert any(isinstance(e, TaskLost) for e in history)
    assert isinstance(history[-1], RunFailed)


async def wait_for_event(
    backplane: NatsBackplane,
    run_id: str,
    predicate: Callable[[AnyEvent], bool],
    timeout: float = 10,
) -> AnyEvent:
    async with asyncio.timeout(timeout):
        async for _seq, event in backplane.events.follow_run(run_id):
            if predicate(event):
                return event
    raise AssertionError("run ended before the awaited event")


async def test_a_second_orchestrator_stands_by_and_takes_over(backplane: NatsBackplane) -> None:
    async with stand_in_agent(backplane, succeed):
        first_stop = asyncio.Event()
        first = Orchestrator(backplane)
        first_task = asyncio.ensure_future(first.run(first_stop))
        await eventually(lambda: _true(first.live), what="the first orchestrator to lead")
        async with orchestrator(backplane) as second:
            run_id = await schedule(backplane, DIAMOND, "d")
            await until_end(backplane, run_id)
            assert not second.live and second.lease_revision == 0  # it never decided
            first_stop.set()
            await first_task  # a graceful stop releases the lease
            await eventually(lambda: _true(second.live), what="the standby to take over")
            events = await until_end(backplane, await schedule(backplane, DIAMOND, "d"))
    assert isinstance(events[-1], RunSucceeded)


async def _true(value: bool) -> bool | None:
    return True if value else None


async def test_the_checkpoint_skips_finished_runs_and_holds_at_the_oldest_open_one(
    backplane: NatsBackplane,
) -> None:
    release = asyncio.Event()

    async def hold_held(d: Dispatch) -> bool:
        if d.task_id == "x":  # (by task: the dispatch may arrive before held_run is known)
            await release.wait()
        return True

    async with stand_in_agent(backplane, hold_held):
        async with orchestrator(backplane):
            for _ in range(3):
                await until_end(backplane, await schedule(backplane, DIAMOND, "d"))
            end = await backplane.events.last_seq()

            async def past_finished_runs() -> bool | None:
                return True if (await backplane.checkpoints.get(CHECKPOINT) or 0) > end else None

            await eventually(past_finished_runs, what="the checkpoint to pass finished runs")
            held_run = await schedule(backplane, defs(TaskDef(id="x", command="true")), "x")
            first_seq = (await backplane.events.history(held_run))[0][0]

            async def at_open_run() -> bool | None:
                return True if await backplane.checkpoints.get(CHECKPOINT) == first_seq else None

            await eventually(at_open_run, what="the checkpoint to hold at the open run")
        # The orchestrator is gone; the task finishes; a new one starts from the checkpoint.
        release.set()
        async with orchestrator(backplane) as restarted:
            events = await until_end(backplane, held_run)
            assert restarted.first_seq == {} and restarted.seen_seq >= first_seq
    assert isinstance(events[-1], RunSucceeded)
