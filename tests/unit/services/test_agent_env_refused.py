"""An agent refuses a dispatch whose environment sets a denied variable (`core.env_policy`):
defence in depth against an older or hostile writer of the work queue. The attempt is claimed
and reported failed (`spawn_error`, one line), and nothing is spawned."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.env_policy import parse_deny_env
from core.events import TaskFailed, TaskStarted, TaskSucceeded
from services import agent as agent_module
from tests.fakes import MemoryBackplane, MemoryServer
from tests.unit.services.test_agent import dispatch, no_work_left, result_of, running_agent
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def short_pulls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "FETCH_TIMEOUT", 0.05)


async def test_a_dispatch_setting_ld_preload_is_refused_and_nothing_runs(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    async with running_agent(server, workdir=tmp_path):
        await bp.work.dispatch(
            dispatch("r-preload", f"touch {marker}", env={"LD_PRELOAD": "/tmp/evil.so"})
        )
        done = await result_of(bp, "r-preload")
        await eventually(lambda: no_work_left(server), what="refused dispatch acked")
    assert isinstance(done, TaskFailed)
    assert (done.reason, done.exit_code, done.spawned_at) == ("spawn_error", None, None)
    assert "LD_PRELOAD" in done.message and "\n" not in done.message
    assert not marker.exists()  # nothing was spawned
    kinds = [type(e) for _, e in await bp.events.history("r-preload")]
    assert kinds == [TaskStarted, TaskFailed]  # claimed, then failed: the run can move on


async def test_a_nul_in_a_dispatch_value_is_refused_too(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    async with running_agent(server, workdir=tmp_path):
        await bp.work.dispatch(dispatch("r-nul", "true", env={"A": "x\0y"}))
        done = await result_of(bp, "r-nul")
    assert isinstance(done, TaskFailed) and done.reason == "spawn_error"
    assert "NUL" in done.message


async def test_the_agent_policy_is_configurable(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    policy = parse_deny_env("-PATH,SECRET_HOOK")
    async with running_agent(server, workdir=tmp_path, env_policy=policy):
        await bp.work.dispatch(dispatch("r-path", 'echo "$PATH"', env={"PATH": "/usr/bin:/bin"}))
        await bp.work.dispatch(dispatch("r-hook", "true", env={"SECRET_HOOK": "x"}))
        allowed = await result_of(bp, "r-path")
        denied = await result_of(bp, "r-hook")
    assert isinstance(allowed, TaskSucceeded) and allowed.output_tail == "/usr/bin:/bin\n"
    assert isinstance(denied, TaskFailed) and "SECRET_HOOK" in denied.message
