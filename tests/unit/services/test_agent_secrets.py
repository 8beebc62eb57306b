"""`${secret:NAME}` in a dispatch's environment: the agent resolves it from its own
$CYCLONETIX_SECRET_NAME or its secrets file, masks the value in what it stores, and refuses
(spawn_error, naming the secret) one it does not know."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.events import TaskFailed, TaskSucceeded
from services import agent as agent_module
from tests.fakes import MemoryBackplane, MemoryServer
from tests.unit.services.test_agent import dispatch, logs_of, result_of, running_agent

pytestmark = pytest.mark.timeout(60)
VALUE = "s3cr3t-value-xyz"


@pytest.fixture(autouse=True)
def short_pulls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "FETCH_TIMEOUT", 0.05)


async def test_a_secret_from_the_agent_environment_reaches_the_command_masked(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CYCLONETIX_SECRET_API_TOKEN", VALUE)
    out = tmp_path / "seen"
    command = (
        f'echo "token=$API_TOKEN"; printf %s "$API_TOKEN" > {out}; '
        'echo "agent secrets: ${CYCLONETIX_SECRET_API_TOKEN:-none}"; '
        "printf 's3cr3t-'; sleep 0.2; printf 'value-xyz\\n'"  # split across two chunks
    )
    async with running_agent(server, workdir=tmp_path):
        await bp.work.dispatch(dispatch("r-sec", command, env={"API_TOKEN": "${secret:API_TOKEN}"}))
        done = await result_of(bp, "r-sec")
    assert out.read_text() == VALUE  # the command saw the value
    assert isinstance(done, TaskSucceeded)
    logs = await logs_of(bp, "r-sec")
    assert VALUE.encode() not in logs and VALUE not in done.output_tail
    assert logs == b"token=***\nagent secrets: none\n***\n"
    assert done.output_tail == logs.decode()


async def test_a_secret_from_the_secrets_file_and_one_unknown(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    async with running_agent(server, workdir=tmp_path, secrets={"DB": "pw-123456"}):
        await bp.work.dispatch(
            dispatch("r-file", 'echo "dsn=$DSN"; exit 1', env={"DSN": "pg://u:${secret:DB}@h"})
        )
        await bp.work.dispatch(
            dispatch("r-unknown", f"touch {tmp_path}/ran", env={"K": "${secret:NOPE}"})
        )
        failed = await result_of(bp, "r-file")
        unknown = await result_of(bp, "r-unknown")
    assert isinstance(failed, TaskFailed) and failed.output_tail == "dsn=pg://u:***@h\n"
    assert isinstance(unknown, TaskFailed) and unknown.reason == "spawn_error"
    assert "secret NOPE" in unknown.message and "\n" not in unknown.message
    assert not (tmp_path / "ran").exists()
