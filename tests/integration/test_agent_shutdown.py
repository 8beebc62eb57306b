"""An agent process stopped while NATS is down exits within its grace period plus a few seconds:
every write of its shutdown (the heartbeat's delete, a task's result, a hand-back) has a short
deadline instead of the minute a publish may otherwise retry for."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.test_agent import AgentProcess, dispatch, wait_for_file

if TYPE_CHECKING:
    from collections.abc import Iterator

    from services.embedded_nats import EmbeddedNats
    from services.nats import NatsBackplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

GRACE = 1.0
KILL_GRACE = 1.0
# What exiting may take beyond the grace periods: the short deadlines of the shutdown writes,
# closing the connection, Python's start-up and exit. Only a bound for how long the test
# waits: a failure means "did not exit", never "was slow".
SLACK = 15.0


@pytest.fixture
def agent_process(nats_url: str, tmp_path: Path) -> Iterator[AgentProcess]:
    """An agent process with short grace periods (killed at the end if it is still there)."""
    args = ("--workdir", str(tmp_path), "--shutdown-grace", str(GRACE))
    agent = AgentProcess(nats_url, tmp_path / "agent.log", *args, "--kill-grace", str(KILL_GRACE))
    try:
        yield agent
    finally:
        agent.stop()


COMMANDS = {
    "idle": None,
    # Outlives the grace: killed, its dispatch handed back.
    "running": "touch running; sleep 300",
    # Ends within the grace, but its result cannot be stored: handed back, not retried forever.
    "finishing": "touch running; while [ ! -e go ]; do sleep 0.02; done",
}


@pytest.mark.parametrize("case", list(COMMANDS))
async def test_sigterm_while_nats_is_down_exits_within_the_grace(
    backplane: NatsBackplane,
    nats_server: EmbeddedNats,
    agent_process: AgentProcess,
    tmp_path: Path,
    case: str,
) -> None:
    agent = agent_process
    await agent.wait_registered(backplane)
    if (command := COMMANDS[case]) is not None:
        await backplane.work.dispatch(dispatch("r-busy", command))
        await wait_for_file(tmp_path / "running")
    await backplane.close()
    nats_server.stop()

    agent.proc.send_signal(signal.SIGTERM)
    (tmp_path / "go").touch()

    code = await agent.wait_exit(timeout=GRACE + KILL_GRACE + SLACK)
    assert code == 0, agent.log
    assert "Traceback" not in agent.log
