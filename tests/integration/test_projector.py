"""The projector against a real nats-server: it follows live runs an orchestrator drives, gets
past bytes that are no event of this version, and a restarted projector resumes from its store's
checkpoint; each time the store equals a fresh replay of the log (`cyclonetix replay --verify`'s
comparison). The store is the memory one: the projector's own logic is what is tested here (the
stores have their contract suite)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from core.run import RunStatus
from projections.memory import MemoryReadModel, MemoryTables
from services.cli.replay import verify
from services.nats import NatsBackplane, connect
from services.nats.names import event_subject
from services.ports import Backplane
from services.projector import Projector, replay
from tests.rolekit import (
    DIAMOND,
    Connect,
    running_orchestrator,
    schedule,
    stand_in_agent,
    until_end,
    until_stopped,
)
from tests.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def new_connection(backplane: NatsBackplane) -> Connect:
    async def new() -> Backplane:
        return await connect(backplane.url, name="orchestrator")

    return new


@contextlib.asynccontextmanager
async def projecting(url: str, store: MemoryReadModel) -> AsyncIterator[Projector]:
    """A projector on its own connection, as in its own process; stopped on exit (and it must
    return promptly once stopped)."""
    own = await connect(url, name="projector")
    projector = Projector(own.events, store)
    async with until_stopped(projector.run, own):
        yield projector


async def applied_up_to(backplane: NatsBackplane, store: MemoryReadModel) -> int:
    last = await backplane.events.last_seq()

    async def probe() -> int | None:
        return last if await store.checkpoint() >= last else None

    return await eventually(probe, timeout=20, what=f"the store to apply up to {last}")


async def test_follows_live_runs_and_resumes_after_a_restart(
    backplane: NatsBackplane, new_connection: Connect
) -> None:
    tables = MemoryTables()  # the store: it outlives each projector
    store = MemoryReadModel(tables)
    async with running_orchestrator(new_connection), stand_in_agent(backplane):
        async with projecting(backplane.url, store) as projector:
            await asyncio.wait_for(projector.live.wait(), 10)  # an empty log: live at once
            first = await schedule(backplane, DIAMOND, "d")
            await until_end(backplane, first)
            last = await applied_up_to(backplane, store)
            assert projector.lag.applied == last
            detail = await store.get_run(first)
            assert detail is not None
            assert detail.run.status == RunStatus.SUCCEEDED
            assert [t.status for t in detail.tasks] == ["succeeded"] * 4

        # While no projector runs, more runs happen; a new one (cold cache) catches up.
        second = await schedule(backplane, DIAMOND, "d")
        await until_end(backplane, second)
        restarted = MemoryReadModel(tables)
        async with projecting(backplane.url, restarted):
            await applied_up_to(backplane, restarted)
            third = await schedule(backplane, DIAMOND, "d")
            await until_end(backplane, third)
            await applied_up_to(backplane, restarted)
    page = await restarted.list_runs()
    assert [r.run_id for r in page.items] == [third, second, first]
    assert await verify(backplane.events, restarted) == ([], 0)


async def test_gets_past_messages_that_are_no_event(backplane: NatsBackplane) -> None:
    newer = json.dumps({"type": "TaskPaused", "run_id": "r-new", "task_id": "t"}).encode()
    js = backplane.connection.js
    skipped = [
        (await js.publish(event_subject("r-new", "TaskPaused"), newer)).seq,
        (await js.publish(event_subject("r-junk", "Junk"), b"\xff not json")).seq,
    ]
    store = MemoryReadModel()
    async with projecting(backplane.url, store):
        run_id = await schedule(backplane, DIAMOND, "d")  # no orchestrator: just scheduled
        await applied_up_to(backplane, store)
    assert await store.checkpoint() > max(skipped)
    detail = await store.get_run(run_id)
    assert detail is not None
    assert detail.run.status == RunStatus.SCHEDULED
    assert await verify(backplane.events, store) == ([], 0)


async def test_a_message_that_is_no_event_at_the_end_of_the_log_is_applied_past(
    backplane: NatsBackplane,
) -> None:
    run_id = await schedule(backplane, DIAMOND, "d")
    js = backplane.connection.js
    last = (await js.publish(event_subject("r-junk", "Junk"), b"\xff not json")).seq
    tables = MemoryTables()
    async with projecting(backplane.url, MemoryReadModel(tables)) as first:
        await asyncio.wait_for(first.live.wait(), 10)
        assert await applied_up_to(backplane, MemoryReadModel(tables)) == last
    assert tables.checkpoint == last
    async with projecting(backplane.url, MemoryReadModel(tables)) as second:
        await asyncio.wait_for(second.live.wait(), 10)  # nothing to catch up with
        await asyncio.sleep(0.2)
    assert second.batches == 0
    assert tables.checkpoint == last
    detail = await MemoryReadModel(tables).get_run(run_id)
    assert detail is not None
    assert await verify(backplane.events, MemoryReadModel(tables)) == ([], 0)


async def test_replay_ends_when_the_log_does_not_hold_its_target(
    backplane: NatsBackplane,
) -> None:
    """A target past what the log holds (its last messages gone, or asked beyond its end): the
    replay stops once it has read what is stored, at once, and says it did not complete. An
    unreadable last message is read past, not waited on."""
    run_id = await schedule(backplane, DIAMOND, "d")
    junk = event_subject(run_id, "Junk")
    last = (await backplane.connection.js.publish(junk, b"\xff not json")).seq
    store = MemoryReadModel()
    done = await asyncio.wait_for(replay(backplane.events, store, upto=last + 3), 5)
    assert (done.complete, done.checkpoint, done.applied) == (False, last, last - 1)
    assert [r.run_id for r in (await store.list_runs()).items] == [run_id]
