"""What only the fake has: fault injection, a clock tests can move, and the bookkeeping the
contract suite cannot observe on both backends. The ports' behaviour itself is checked by the
contract suite (tests/contract), on this fake and on NATS alike."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import cast

import pytest

from core.agents import AgentInfo
from core.errors import Unavailable
from core.events import Dispatch, QueuedTask, RunScheduled, TasksQueued, TaskStarted
from tests.fakes import AGENT_TTL, DUPLICATE_WINDOW, MemoryBackplane, MemoryServer

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def started(task_id: str) -> TaskStarted:
    return TaskStarted(run_id="r1", ts=NOW, task_id=task_id, attempt=1, agent_id="a1")


def dispatch(task_id: str) -> Dispatch:
    return Dispatch(run_id="r1", task_id=task_id, attempt=1, queue="default", command="true")


async def test_failing_appends_store_nothing() -> None:
    bp = MemoryBackplane()
    bp.server.faults.fail_appends(2)
    with pytest.raises(Unavailable, match="injected"):
        await bp.events.append(started("t1"))
    pipelined = bp.events.append_nowait(started("t2"))
    with pytest.raises(Unavailable):
        await bp.events.flush()
    assert pipelined.done() and isinstance(pipelined.exception(), Unavailable)
    assert await bp.events.history("r1") == []
    assert await bp.events.append(started("t1")) == 1  # the faults are used up


async def test_a_lost_ack_leaves_the_event_stored_and_a_retry_recognises_it() -> None:
    bp = MemoryBackplane()
    first = await bp.events.append(
        RunScheduled(run_id="r1", ts=NOW, kind="dag", target="d", name="d", graph=())
    )
    queued = TasksQueued(
        run_id="r1", ts=NOW, tasks=(QueuedTask(task_id="t1", attempt=1, queue="default"),)
    )
    bp.server.faults.lose_append_acks()
    with pytest.raises(Unavailable):
        await bp.events.append_expected(queued, first)
    assert await bp.events.append_expected(queued, first) == first + 1
    assert len(await bp.events.history("r1")) == 2


async def test_failing_dispatches_and_dropped_acks() -> None:
    bp = MemoryBackplane()
    bp.server.faults.fail_dispatches()
    with pytest.raises(Unavailable):
        await bp.work.dispatch(dispatch("t1"))
    assert await bp.work.depths() == {}
    await bp.work.dispatch(dispatch("t1"))
    consumer = await bp.work.consumer("default", ack_wait=0.05)
    [item] = await consumer.fetch(1, timeout=1)
    bp.server.faults.drop_work_acks()
    await item.ack()  # lost on the way
    [again] = await consumer.fetch(1, timeout=2)
    assert (again.dispatch, again.delivery) == (dispatch("t1"), 2)
    await again.ack()
    assert await consumer.fetch(1, timeout=0.15) == []


async def test_duplicates_are_recognised_within_the_window_only() -> None:
    bp = MemoryBackplane()
    assert await bp.events.append(started("t1")) == 1
    assert await bp.work.dispatch(dispatch("t1")) == 1
    bp.server.clock.advance(DUPLICATE_WINDOW - 1)
    assert await bp.events.append(started("t1")) == 1
    assert await bp.work.dispatch(dispatch("t1")) == 1
    bp.server.clock.advance(2)  # past the window since the first store
    assert await bp.events.append(started("t1")) == 2
    assert await bp.work.dispatch(dispatch("t1")) == 2


async def test_agents_expire_without_heartbeats() -> None:
    bp = MemoryBackplane()
    info = AgentInfo(id="a1", host="h", pid=1, queues=["default"], started_at=NOW, seen_at=NOW)
    await bp.agents.heartbeat(info)
    bp.server.clock.advance(AGENT_TTL - 1)
    assert await bp.agents.list() == [info]
    await bp.agents.heartbeat(info)
    bp.server.clock.advance(AGENT_TTL - 1)
    assert await bp.agents.list() == [info]  # renewed by the second heartbeat
    bp.server.clock.advance(1)
    assert await bp.agents.list() == []


async def test_close_stores_what_was_pipelined_then_refuses() -> None:
    server = MemoryServer()
    bp = server.connect("closing")
    pending = [bp.events.append_nowait(started(f"t{i}")) for i in range(3)]
    await bp.close()
    assert [p.result() for p in pending] == [1, 2, 3]
    with pytest.raises(Unavailable, match="closed"):
        bp.events.append_nowait(started("t9"))
    other = server.connect("still-open")
    assert len(await other.events.history("r1")) == 3  # other connections keep working


async def test_pipelined_appends_are_stored_after_the_call_returns() -> None:
    bp = MemoryBackplane()
    future = bp.events.append_nowait(started("t1"))
    assert bp.server.events.last_seq() == 0  # as on NATS: not stored yet
    assert await future == 1


async def test_an_event_that_cannot_be_encoded_fails_at_once() -> None:
    bp = MemoryBackplane()
    bad = RunScheduled(
        run_id="r1",
        ts=NOW,
        kind="dag",
        target="d",
        name="d",
        graph=(),
        context=cast("dict[str, str]", {"K": object()}),
    )
    with pytest.raises(TypeError):
        await bp.events.append(bad)
    with pytest.raises(TypeError):
        bp.events.append_nowait(bad)
    assert await bp.events.last_seq() == 0


async def test_a_lost_dispatch_not_handled_goes_to_the_next_reader() -> None:
    bp = MemoryBackplane()
    await bp.work.dispatch(dispatch("t1"))
    consumer = await bp.work.consumer("default", ack_wait=0.05, max_deliver=1)
    await consumer.fetch(1, timeout=1)
    assert await consumer.fetch(1, timeout=0.2) == []  # this pull notices the deliveries ran out
    first = bp.work.lost()
    got = await asyncio.wait_for(anext(first), 1)
    await first.aclose()  # stopped before handling it
    second = bp.work.lost()
    assert await asyncio.wait_for(anext(second), 1) == got
    await second.aclose()
