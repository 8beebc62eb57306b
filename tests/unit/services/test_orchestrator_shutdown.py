"""A stopping orchestrator (on the in-memory backplane): it decides what the log held when the
stop came, stores it, then frees its lease. The whole system stopping in order, with real
processes, is in tests/e2e/test_shutdown.py."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from core.definitions import TaskDef
from core.events import RunSucceeded, TasksQueued, TaskStarted, TaskSucceeded, encode, msg_id
from services.orchestrator import LEASE, Orchestrator
from tests.fakes import MemoryBackplane, MemoryServer
from tests.rolekit import defs, history, schedule, wait_for_event

pytestmark = pytest.mark.timeout(60)

ONE = defs(TaskDef(id="only", command="true"))


async def queued_run(
    server: MemoryServer, bp: MemoryBackplane, shutdown_grace: float
) -> tuple[str, asyncio.Event, asyncio.Event, asyncio.Task[None]]:
    """A leading orchestrator with one run whose only task is queued: (run, stop, kill, task)."""
    stop, kill = asyncio.Event(), asyncio.Event()
    orchestrator = Orchestrator(server.connect("orchestrator"), shutdown_grace=shutdown_grace)
    task = asyncio.ensure_future(orchestrator.run(stop, kill))
    run_id = await schedule(bp, ONE, "only")
    await wait_for_event(bp, run_id, lambda e: isinstance(e, TasksQueued))
    return run_id, stop, kill, task


def finish_and_stop(server: MemoryServer, run_id: str, stop: asyncio.Event) -> None:
    """The task's start and success are stored and the stop comes, in one step: the
    orchestrator has not seen the result when it is told to stop."""
    now = dt.datetime.now(dt.UTC)
    for event in (
        TaskStarted(
            run_id=run_id, ts=now, task_id="only", attempt=1, agent_id="a", host="h", pid=1
        ),
        TaskSucceeded(run_id=run_id, ts=now, task_id="only", attempt=1, agent_id="a", exit_code=0),
    ):
        server.inject_event_bytes(run_id, encode(event), msg_id(event))
    stop.set()


async def test_a_stopping_orchestrator_decides_what_the_log_held_at_the_stop(
    server: MemoryServer, bp: MemoryBackplane
) -> None:
    run_id, stop, _, task = await queued_run(server, bp, shutdown_grace=30)

    finish_and_stop(server, run_id, stop)
    await task

    events = await history(bp, run_id)
    assert isinstance(events[-1], RunSucceeded)  # decided and stored before it returned
    assert await bp.leases.holder(LEASE) is None  # then released
