"""services.process: a gated command is spawned at once but runs nothing before its gate is done
(the agent's gate is the acknowledgement of TaskStarted: an execution is always recorded)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from core.errors import Unavailable
from services import process
from services.process import CommandResult, run_command

BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


async def gated(
    command: str,
    gate: asyncio.Future[int],
    *,
    cwd: Path | None = None,
    timeout: float = 30.0,
    cancel: asyncio.Event | None = None,
    kill_grace: float = 5.0,
) -> asyncio.Task[CommandResult]:
    """The command started with `gate`, once its shell is surely up and held."""
    task = asyncio.ensure_future(
        run_command(
            command,
            env=BASE_ENV,
            cwd=cwd,
            timeout=timeout,
            gate=gate,
            cancel=cancel,
            kill_grace=kill_grace,
        )
    )
    await asyncio.sleep(0.3)  # the shell is up (and held) long before this
    return task


@pytest.mark.parametrize("where", ["own", "other"])  # posix_spawn, or Popen for another cwd
async def test_nothing_runs_before_the_gate_and_everything_after(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    if where == "own":
        monkeypatch.chdir(work)
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = await gated(f"touch {work}/ran; echo out", gate, cwd=work)
    assert not (work / "ran").exists() and not task.done()
    gate.set_result(7)
    result = await asyncio.wait_for(task, 10)
    assert result.ok and result.output_tail == "out\n"
    assert (work / "ran").exists()


async def test_the_command_sees_what_it_would_see_ungated(tmp_path: Path) -> None:
    # Same $0, no positional parameters, stdin at EOF, the same line numbers in shell errors.
    command = 'echo "$0|$#|$(cat)|${_cx_gate-unset}"; no_such_command_cx'
    plain = await run_command(command, env=BASE_ENV, cwd=None, timeout=30)
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    gate.set_result(1)
    held = await run_command(command, env=BASE_ENV, cwd=None, timeout=30, gate=gate)
    assert held.output_tail == plain.output_tail
    assert held.exit_code == plain.exit_code == 127
    assert plain.output_tail.startswith(f"{process.SHELL}|0||unset\n")


async def test_a_failed_gate_ends_the_held_process_unrun(tmp_path: Path) -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = await gated(f"touch {tmp_path}/ran", gate)
    gate.set_exception(Unavailable("TaskStarted not stored"))
    with pytest.raises(Unavailable, match="not stored"):
        await asyncio.wait_for(task, 10)
    await asyncio.sleep(0.2)
    assert not (tmp_path / "ran").exists()


async def test_a_cancel_while_held_is_a_kill_and_runs_nothing(tmp_path: Path) -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    cancel = asyncio.Event()
    task = await gated(f"touch {tmp_path}/ran", gate, cancel=cancel, kill_grace=1.0)
    cancel.set()
    result = await asyncio.wait_for(task, 10)
    assert result.reason == "killed"
    gate.set_result(1)  # too late: nothing is released
    await asyncio.sleep(0.2)
    assert not (tmp_path / "ran").exists()


async def test_the_clock_and_the_timeout_start_at_the_release(tmp_path: Path) -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = await gated("sleep 0.2", gate, timeout=0.25)
    await asyncio.sleep(0.3)  # held longer than the timeout: it must not count
    loop = asyncio.get_running_loop()
    released = loop.time()
    gate.set_result(1)
    result = await asyncio.wait_for(task, 10)
    assert result.ok, result.message
    assert result.duration_ms < (loop.time() - released) * 1000 + 1


def test_a_held_shell_whose_releaser_dies_exits_without_running(tmp_path: Path) -> None:
    spawned = process._spawn(f"touch {tmp_path}/ran", BASE_ENV, None, gated=True)
    assert spawned.gate is not None
    os.close(spawned.gate)  # what the kernel does when the agent is killed
    _, status = os.waitpid(spawned.pid, 0)
    os.close(spawned.fd)
    assert os.waitstatus_to_exitcode(status) == 125
    assert not (tmp_path / "ran").exists()


async def test_cancelling_the_caller_while_held_kills_the_process(tmp_path: Path) -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = await gated(f"touch {tmp_path}/ran", gate)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set_result(1)
    await asyncio.sleep(0.2)
    assert not (tmp_path / "ran").exists()
