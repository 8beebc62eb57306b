"""The orchestrator against a real nats-server, with a scripted stand-in for the agents: only
what needs the server itself — deliveries that run out (JetStream's advisories), a restart of
the server, the bytes a newer writer stores. Everything that needs only the ports' semantics runs
on the in-memory fake in tests/unit/services/test_orchestrator.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from core.events import (
    RunScheduled,
    RunSucceeded,
    msg_id,
)
from services.nats import NatsBackplane, connect
from services.nats.names import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
    MSG_ID,
    event_subject_of,
    run_events_subject,
)
from services.ports import Backplane
from tests.rolekit import (
    DIAMOND,
    lost_retry_attempt_ends_the_run,
    newer_writers_run_ends,
    running_orchestrator,
    schedule,
    stand_in_agent,
    succeed,
    until_end,
)
from tests.waiting import eventually

if TYPE_CHECKING:
    from services.embedded_nats import EmbeddedNats
    from tests.rolekit import Connect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def new_connection(backplane: NatsBackplane) -> Connect:
    async def new() -> Backplane:
        return await connect(backplane.url, name="orchestrator")

    return new


async def test_a_lost_retry_attempt_ends_as_task_lost_not_stranded(
    backplane: NatsBackplane, new_connection: Connect
) -> None:
    """JetStream's own advisory (deliveries ran out) becomes TaskLost for attempt 2."""
    await lost_retry_attempt_ends_the_run(backplane, new_connection, ack_wait=0.3, max_deliver=2)


async def test_a_run_scheduled_by_a_newer_writer_runs_to_the_end(
    backplane: NatsBackplane, new_connection: Connect
) -> None:
    """Published raw, with the subject, message id and expected sequence 0 the adapter sends."""

    async def publish(event: RunScheduled, data: bytes) -> None:
        headers = {
            MSG_ID: msg_id(event),
            EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
            EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: run_events_subject(event.run_id),
        }
        await backplane.connection.js.publish(event_subject_of(event), data, headers=headers)

    await newer_writers_run_ends(backplane, new_connection, publish)


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
