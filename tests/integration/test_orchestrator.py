"""The orchestrator against a real nats-server, with a scripted stand-in for the agents: only
what needs the server itself — deliveries that run out (JetStream's advisories), a restart of
the server, the bytes a newer writer stores. Everything that needs only the ports' semantics runs
on the in-memory fake in tests/unit/services/test_orchestrator.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from core.definitions import RetryPolicy, TaskDef
from core.events import (
    TERMINAL,
    Dispatch,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskFailed,
    TaskLost,
    TaskQueued,
    msg_id,
)
from services.nats import NatsBackplane, connect
from services.nats.names import EXPECTED_LAST_SUBJECT_SEQUENCE, MSG_ID, event_subject
from services.ports import Backplane
from tests.rolekit import (
    DIAMOND,
    as_a_newer_writer,
    defs,
    history,
    plan,
    running_orchestrator,
    schedule,
    stand_in_agent,
    succeed,
    until_end,
    wait_for_event,
)
from tests.waiting import eventually

if TYPE_CHECKING:
    from services.embedded_nats import EmbeddedNats
    from tests.rolekit import Connect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# A task with one retry, at once: attempt 2 follows attempt 1's failure without a delay.
RETRIED = defs(TaskDef(id="x", command="true", retries=RetryPolicy(count=1, delay_seconds=0)))


@pytest.fixture
def new_connection(backplane: NatsBackplane) -> Connect:
    async def new() -> Backplane:
        return await connect(backplane.url, name="orchestrator")

    return new


async def test_a_lost_retry_attempt_ends_as_task_lost_not_stranded(
    backplane: NatsBackplane, new_connection: Connect
) -> None:
    """Attempt 1 fails; attempt 2's agent takes the dispatch and never settles it (every
    delivery): once its deliveries run out, JetStream's advisory becomes TaskLost for attempt
    2, and the run ends."""

    async def fail_then_vanish(d: Dispatch) -> bool | None:
        return False if d.attempt == 1 else None

    async with (
        running_orchestrator(new_connection),
        stand_in_agent(backplane, fail_then_vanish, ack_wait=0.3, max_deliver=2),
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


async def test_a_run_scheduled_by_a_newer_writer_runs_to_the_end(
    backplane: NatsBackplane, new_connection: Connect
) -> None:
    """The raw JSON of a RunScheduled as a newer Cyclonetix would publish it (subject, message
    id, expected sequence 0 as the adapter sends them), with fields this code does not know at
    the top level and inside the task's retry spec: it decodes, the orchestrator retries by that
    spec, and the run succeeds."""
    event = plan(RETRIED, "x")
    await backplane.definitions.put(RETRIED)
    headers = {MSG_ID: msg_id(event), EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}
    await backplane.connection.js.publish(
        event_subject(event.run_id), as_a_newer_writer(event), headers=headers
    )
    assert [type(e) for e in await history(backplane, event.run_id)] == [RunScheduled]

    async def fail_first(d: Dispatch) -> bool:
        return d.attempt > 1

    async with running_orchestrator(new_connection), stand_in_agent(backplane, fail_first):
        events = await until_end(backplane, event.run_id)
    assert isinstance(events[-1], RunSucceeded)
    assert [(type(e), e.attempt) for e in events if isinstance(e, TaskQueued | TaskFailed)] == [
        (TaskQueued, 1),
        (TaskFailed, 1),
        (TaskQueued, 2),
    ]


async def test_the_orchestrator_carries_on_across_a_nats_restart(
    backplane: NatsBackplane, nats_server: EmbeddedNats, new_connection: Connect
) -> None:
    async with running_orchestrator(new_connection) as orch, stand_in_agent(backplane, succeed):
        before = await until_end(backplane, await schedule(backplane, DIAMOND, "d"))
        nats_server.stop()
        nats_server.start()  # same port, same store

        async def scheduled() -> str | None:
            return await schedule(backplane, DIAMOND, "d")  # fails until reconnected

        after = await until_end(backplane, await eventually(scheduled, what="NATS back"))
        assert orch.live
    assert isinstance(before[-1], RunSucceeded)
    assert isinstance(after[-1], RunSucceeded)
