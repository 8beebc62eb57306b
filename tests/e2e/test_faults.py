"""Crashes lose nothing: a killed orchestrator, a killed agent, a restarted NATS server."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from core.definitions import TaskDef
from core.events import TERMINAL, AnyEvent, RunSucceeded, TaskStarted, TaskSucceeded, each_queued
from tests.e2e.conftest import System, tasks

pytestmark = pytest.mark.e2e


def chain(n: int, command: str) -> list[TaskDef]:
    return [
        TaskDef(id=f"t{i}", command=command, dependencies=(f"t{i - 1}",) if i else ())
        for i in range(n)
    ]


def assert_completed_once(events: list[AnyEvent], n: int) -> None:
    # each attempt queued once (by a TasksQueued: a chain's tasks one decision each)
    queued = [(q.task_id, q.attempt) for e in events for q in each_queued(e)]
    assert sorted(queued) == sorted((f"t{i}", 1) for i in range(n))
    assert {e.task_id for e in events if isinstance(e, TaskSucceeded)} == {
        f"t{i}" for i in range(n)
    }
    assert sum(isinstance(e, TERMINAL) for e in events) == 1
    assert isinstance(events[-1], RunSucceeded)


async def test_a_killed_orchestrator_is_restarted_and_the_run_completes(system: System) -> None:
    async with system(tasks(*chain(6, "sleep 0.3")), restart=True) as sys_:
        run_id = await sys_.schedule("t5")
        await sys_.wait_for(run_id, lambda e: isinstance(e, TaskSucceeded) and e.task_id == "t1")
        orchestrator = sys_.cluster.role("orchestrator")
        assert orchestrator.process is not None
        orchestrator.process.send_signal(signal.SIGKILL)
        events = await sys_.until_end(run_id, timeout=60)
        assert orchestrator.restarts == 1
    assert_completed_once(events, 6)


async def test_a_killed_agent_s_task_is_redelivered_to_another_agent(system: System) -> None:
    defs = tasks(TaskDef(id="slow", command="sleep 1.5"))
    async with system(defs, agents=2, agent_args=("--ack-wait", "2")) as sys_:
        run_id = await sys_.schedule("slow")
        first = await sys_.wait_for(run_id, lambda e: isinstance(e, TaskStarted))
        assert isinstance(first, TaskStarted)
        os.kill(first.pid, signal.SIGKILL)
        events = await sys_.until_end(run_id, timeout=60)
    starts = [e for e in events if isinstance(e, TaskStarted)]
    assert [s.delivery for s in starts] == [1, 2]
    assert starts[0].agent_id != starts[1].agent_id
    done = next(e for e in events if isinstance(e, TaskSucceeded))
    assert done.agent_id == starts[1].agent_id
    assert isinstance(events[-1], RunSucceeded)


async def test_a_restarted_nats_server_loses_nothing(system: System) -> None:
    async with system(tasks(*chain(8, "sleep 0.2"))) as sys_:
        run_id = await sys_.schedule("t7")
        await sys_.wait_for(run_id, lambda e: isinstance(e, TaskSucceeded) and e.task_id == "t1")
        nats = sys_.cluster.nats
        assert nats is not None
        await asyncio.to_thread(nats.stop)
        await asyncio.to_thread(nats.start)
        events = await sys_.until_end(run_id, timeout=60)
    assert_completed_once(events, 8)
