"""Subject triggers in a real `cyclonetix orchestrator` process: a trigger published while no
orchestrator runs waits in CX_TRIGGERS and becomes a run once one starts; a request to the
running process is answered with its run; SIGTERM stops the process cleanly."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import TYPE_CHECKING

import pytest

from core.definitions import Definitions, TaskDef
from core.events import RunScheduled
from services.nats import connect
from services.nats.names import trigger_subject
from tests.e2e.conftest import child_env
from tests.waiting import eventually

if TYPE_CHECKING:
    from services.embedded_nats import EmbeddedNats

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DEFS = Definitions(tasks={"report": TaskDef(id="report", command="true")})


async def test_a_trigger_sent_while_no_orchestrator_runs_is_handled_when_one_starts(
    nats_server: EmbeddedNats,
) -> None:
    async with await connect(nats_server.url, name="pytest") as bp:
        await bp.definitions.put(DEFS)
        subject = trigger_subject("outcome", "report")
        await bp.connection.nc.publish(subject, b'{"run_id": "r-while-down", "requested_by": "t"}')
        await bp.connection.nc.flush()

        async def scheduled(run_id: str) -> RunScheduled | None:
            history = await bp.events.history(run_id)
            first = history[0][1] if history else None
            return first if isinstance(first, RunScheduled) else None

        assert await scheduled("r-while-down") is None  # nobody handles it yet
        orchestrator = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "orchestrator",
            "--nats-url",
            nats_server.url,
            env=child_env(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            event = await eventually(
                lambda: scheduled("r-while-down"), what="the late trigger's run"
            )
            assert (event.trigger, event.target) == ("subject", "report")
            reply = await bp.connection.nc.request(subject, b'{"run_id": "r-asked"}', timeout=20)
            assert json.loads(reply.data) == {"run_id": "r-asked", "status": "scheduled"}
        finally:
            orchestrator.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(orchestrator.communicate(), 30)
        assert orchestrator.returncode == 0, stderr.decode()[-2000:]
