"""Helpers for testing the roles on any backplane: the in-memory fake (tests/unit/services) or a
real nats-server (tests/integration). They use only the ports (`services.ports`).

The stand-in agent answers dispatches with scripted results instead of running commands, so an
orchestrator test checks what the orchestrator appends and when; the real agent has its own
tests, and the end-to-end tests run both as processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from core.definitions import Definitions, RetryPolicy, TaskDef
from core.events import (
    TERMINAL,
    AnyEvent,
    Dispatch,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskCancelled,
    TaskFailed,
    TaskLost,
    TaskQueued,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    each_queued,
    encode,
)
from core.scheduling import plan_run
from services.orchestrator import Orchestrator
from services.ports import Backplane, WorkConsumer, WorkItem

__all__ = [
    "DIAMOND",
    "RETRIED",
    "Answer",
    "Connect",
    "as_a_newer_writer",
    "defs",
    "fetch_one",
    "history",
    "lost_retry_attempt_ends_the_run",
    "newer_writers_run_ends",
    "plan",
    "queued_attempts",
    "running_orchestrator",
    "schedule",
    "stand_in_agent",
    "succeed",
    "until_end",
    "wait_for_event",
]

Connect = Callable[[], Awaitable[Backplane]]  # a new connection, as another process would have
# What the stand-in does with a dispatch: True succeed, False fail, None hold it (never settle,
# no result: an agent that took it and vanished). The run id is cancelled while it waits:
# then the answer is TaskCancelled.
Answer = Callable[[Dispatch], Awaitable[bool | None]]


def defs(*tasks: TaskDef) -> Definitions:
    return Definitions(tasks={t.id: t for t in tasks})


DIAMOND = defs(
    TaskDef(id="a", command="true"),
    TaskDef(id="b", command="true", dependencies=("a",)),
    TaskDef(id="c", command="true", dependencies=("a",)),
    TaskDef(id="d", command="true", dependencies=("b", "c")),
)


async def succeed(_: Dispatch) -> bool:
    return True


@contextlib.asynccontextmanager
async def until_stopped(
    run: Callable[[asyncio.Event], Awaitable[object]], *closing: Any
) -> AsyncIterator[None]:
    """`run(stop)` as a task while the block runs, as a role runs in its process; then `stop`
    is set, the task must return within 10 s, and each of `closing` (connections, inboxes) is
    closed, in order, whatever happened."""
    stop = asyncio.Event()
    task = asyncio.ensure_future(run(stop))
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        finally:
            for each in closing:
                await each.close()


@contextlib.asynccontextmanager
async def running_orchestrator(connect: Connect) -> AsyncIterator[Orchestrator]:
    """An orchestrator on its own connection, as in its own process; stopped gracefully (its
    lease released) on exit."""
    own = await connect()
    orch = Orchestrator(own)
    async with until_stopped(orch.run, own):
        yield orch


@contextlib.asynccontextmanager
async def stand_in_agent(
    backplane: Backplane,
    answer: Answer = succeed,
    queue: str = "default",
    *,
    ack_wait: float = 30.0,
    max_deliver: int = 5,
) -> AsyncIterator[None]:
    """Takes the dispatches of `queue`, appends TaskStarted, then the result `answer` gives,
    then acks. An answer still pending when its run's cancellation is announced becomes
    TaskCancelled (as a real agent's killed command would)."""
    consumer = await backplane.work.consumer(queue, ack_wait=ack_wait, max_deliver=max_deliver)
    cancelled: dict[str, asyncio.Event] = {}
    subscribed = asyncio.Event()

    async def listen() -> None:
        signals = backplane.cancels.listen()
        try:
            first = asyncio.ensure_future(anext(signals))
            # Its first step subscribes: done when this resumes on the fake; on NATS the SUB
            # may still be on its way (no test on NATS relies on a stand-in hearing a cancel).
            await asyncio.sleep(0)
            subscribed.set()
            run_id = await first
            while True:
                cancelled.setdefault(run_id, asyncio.Event()).set()
                run_id = await anext(signals)
        finally:
            close = getattr(signals, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    async def handle(item: WorkItem) -> None:
        d = item.dispatch
        run, task, attempt = d.run_id, d.task_id, d.attempt
        now = dt.datetime.now(dt.UTC)
        await backplane.events.append(
            TaskStarted(
                run_id=run,
                ts=now,
                task_id=task,
                attempt=attempt,
                agent_id="stand-in",
                delivery=item.delivery,
            )
        )
        cancel = cancelled.setdefault(run, asyncio.Event())
        answering = asyncio.ensure_future(answer(d))
        cancelling = asyncio.ensure_future(cancel.wait())
        await asyncio.wait({answering, cancelling}, return_when=asyncio.FIRST_COMPLETED)
        cancelling.cancel()
        now = dt.datetime.now(dt.UTC)
        result: AnyEvent
        if not answering.done():
            answering.cancel()
            result = TaskCancelled(
                run_id=run, ts=now, task_id=task, attempt=attempt, agent_id="stand-in"
            )
        else:
            ok = answering.result()
            if ok is None:
                return  # held: never settled
            result = (
                TaskSucceeded(run_id=run, ts=now, task_id=task, attempt=attempt)
                if ok
                else TaskFailed(run_id=run, ts=now, task_id=task, attempt=attempt, exit_code=1)
            )
        await backplane.events.append(result)
        await item.ack()

    handlers: set[asyncio.Task[None]] = set()

    async def loop() -> None:
        while True:
            for item in await consumer.fetch(8, timeout=0.5):
                handler = asyncio.ensure_future(handle(item))
                handlers.add(handler)
                handler.add_done_callback(handlers.discard)

    listener = asyncio.ensure_future(listen())
    await subscribed.wait()
    fetcher = asyncio.ensure_future(loop())
    try:
        yield
    finally:
        tasks = [fetcher, listener, *handlers]
        for t in tasks:
            t.cancel()
        # Their ends (cancelled, or the connection closed under them) are not the test's.
        await asyncio.gather(*tasks, return_exceptions=True)
        await consumer.close()


def plan(definitions: Definitions, target: str) -> RunScheduled:
    """A RunScheduled for the outcome `target` (not appended)."""
    return plan_run(
        definitions,
        kind="outcome",
        target=target,
        now=dt.datetime.now(dt.UTC),
        entropy=os.urandom(16),
    )


async def schedule(backplane: Backplane, definitions: Definitions, target: str) -> str:
    """Publish `definitions` and schedule the outcome `target`; its run id."""
    await backplane.definitions.put(definitions)
    event = plan(definitions, target)
    await backplane.events.schedule_run(event)
    return event.run_id


async def history(backplane: Backplane, run_id: str) -> list[AnyEvent]:
    return [e for _, e in await backplane.events.history(run_id)]


def queued_attempts(events: list[AnyEvent]) -> list[tuple[str, int]]:
    """(task, attempt) of each attempt `events` queue, in order: each attempt of a TasksQueued
    (what the orchestrator writes), or a TaskQueued (older logs)."""
    return [(q.task_id, q.attempt) for e in events for q in each_queued(e)]


async def until_end(backplane: Backplane, run_id: str, timeout: float = 20) -> list[AnyEvent]:
    """The run's whole history once its terminal event is stored (fails after `timeout`)."""
    async with asyncio.timeout(timeout):
        async for _seq, event in backplane.events.follow_run(run_id):
            if isinstance(event, TERMINAL):
                break
    return await history(backplane, run_id)


async def wait_for_event(
    backplane: Backplane,
    run_id: str,
    predicate: Callable[[AnyEvent], bool],
    timeout: float = 10,
) -> AnyEvent:
    async with asyncio.timeout(timeout):
        async for _seq, event in backplane.events.follow_run(run_id):
            if predicate(event):
                return event
    raise AssertionError("run ended before the awaited event")


async def fetch_one(consumer: WorkConsumer, timeout: float = 10.0) -> WorkItem:
    """The next item of `consumer`, over as many fetches as it takes (fails after `timeout`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (remaining := deadline - loop.time()) > 0:
        items = await consumer.fetch(1, timeout=min(remaining, 1.0))
        if items:
            return items[0]
    raise AssertionError(f"no work item within {timeout}s")


def as_a_newer_writer(event: RunScheduled) -> bytes:
    """`event` as JSON the way a newer Cyclonetix could write it: fields this code does not know,
    at the top level and inside every task's retry spec (a rolling upgrade's mixed log)."""
    doc = json.loads(encode(event))
    doc["priority_class"] = {"name": "batch", "weight": 3}
    for node in doc["graph"]:
        node["retries"]["jitter_seconds"] = 0.25
        node["retries"]["retry_on"] = ["exit", "lost"]
    return json.dumps(doc).encode()


# A task with one retry, at once: attempt 2 follows attempt 1's failure without a delay.
RETRIED = defs(TaskDef(id="x", command="true", retries=RetryPolicy(count=1, delay_seconds=0)))


async def newer_writers_run_ends(
    backplane: Backplane,
    connect: Connect,
    store_raw: Callable[[RunScheduled, bytes], Awaitable[None]],
) -> None:
    """A RunScheduled stored as a newer writer would (`store_raw` puts the bytes in the log the
    backend's way), with fields this code does not know at the top level and inside the task's
    retry spec: it decodes, the orchestrator retries by that spec, and the run succeeds."""
    event = plan(RETRIED, "x")
    await backplane.definitions.put(RETRIED)
    await store_raw(event, as_a_newer_writer(event))
    assert [type(e) for e in await history(backplane, event.run_id)] == [RunScheduled]

    async def fail_first(d: Dispatch) -> bool:
        return d.attempt > 1

    async with running_orchestrator(connect), stand_in_agent(backplane, fail_first):
        events = await until_end(backplane, event.run_id)
    assert isinstance(events[-1], RunSucceeded)
    decided = [
        (type(e), e.attempt if isinstance(e, TaskFailed) else queued_attempts([e]))
        for e in events
        if isinstance(e, TaskQueued | TasksQueued | TaskFailed)
    ]
    assert decided == [
        (TasksQueued, [("x", 1)]),
        (TaskFailed, 1),
        (TasksQueued, [("x", 2)]),
    ]


async def lost_retry_attempt_ends_the_run(
    backplane: Backplane, connect: Connect, *, ack_wait: float, max_deliver: int
) -> None:
    """Attempt 1 fails; attempt 2's agent takes it and vanishes until its deliveries run out:
    that is TaskLost for attempt 2 (a failed attempt, no retries left), and the run ends."""

    async def fail_then_vanish(d: Dispatch) -> bool | None:
        return False if d.attempt == 1 else None

    async with (
        running_orchestrator(connect),
        stand_in_agent(backplane, fail_then_vanish, ack_wait=ack_wait, max_deliver=max_deliver),
    ):
        run_id = await schedule(backplane, RETRIED, "x")
        lost = await wait_for_event(
            backplane, run_id, lambda e: isinstance(e, TaskLost), timeout=30
        )
        assert isinstance(lost, TaskLost)
        assert (lost.task_id, lost.attempt) == ("x", 2)
        events = await until_end(backplane, run_id)
    assert [e.attempt for e in events if isinstance(e, TaskLost)] == [2]
    assert isinstance(events[-1], RunFailed)
    assert sum(isinstance(e, TERMINAL) for e in events) == 1
