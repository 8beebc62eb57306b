"""The guardian process on its own (no NATS): what it kills when its pipe closes, what it spares,
and that a guardian that died is replaced and told everything again. The agent's side, with a
real agent process SIGKILLed, is in tests/integration/test_agent.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.guardian import MARKER_ENV, Guardian
from tests.waiting import eventually

SLEEP = ["sleep", "300"]


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, each in a session of its own; killed and reaped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start(procs: list[subprocess.Popen[bytes]], marker: str | None = None) -> int:
    env = dict(os.environ)
    env.pop(MARKER_ENV, None)
    if marker is not None:
        env[MARKER_ENV] = marker
    proc = subprocess.Popen(SLEEP, env=env, start_new_session=True)
    procs.append(proc)
    return proc.pid


async def ended(procs: list[subprocess.Popen[bytes]], *pids: int) -> None:
    """Wait until the given children have ended (and reap them)."""
    by_pid = {p.pid: p for p in procs}

    async def probe() -> bool | None:
        return True if all(by_pid[pid].poll() is not None for pid in pids) else None

    await eventually(probe, timeout=15, what=f"processes {pids} to end")


async def test_its_pipe_closing_kills_registered_groups_and_marked_processes(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    guardian = Guardian("agent-a")
    guardian.start()
    registered = start(spawned)  # its own group, registered, no marker
    marked = start(spawned, marker="agent-a")  # a session of its own, found by the marker
    stranger = start(spawned, marker="agent-b")  # another agent's: spared
    guardian.watch(registered)

    process = guardian.close()  # what the kernel does when the agent dies
    assert process is not None

    await ended(spawned, registered, marked)
    assert process.wait(15) == 0
    assert spawned[2].poll() is None and stranger == spawned[2].pid


async def test_forgotten_groups_are_spared(spawned: list[subprocess.Popen[bytes]]) -> None:
    guardian = Guardian("agent-a")
    guardian.start()
    done = start(spawned)
    guardian.watch(done)
    guardian.forget(done)  # the agent saw the group end (here: pretend it did)

    assert await guardian.stop() == 0
    assert spawned[0].poll() is None


async def test_a_guardian_that_died_is_replaced_and_told_everything_again(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    guardian = Guardian("agent-a")
    guardian.start()
    registered = start(spawned)
    guardian.watch(registered)
    first = guardian.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    async def replaced() -> bool | None:
        guardian.ensure_running()  # (or a registration found its pipe broken first)
        return True if guardian.pid not in (None, first) else None

    await eventually(replaced, what="the guardian to be replaced")
    assert guardian.restarts == 1
    assert spawned[0].poll() is None  # the first one died without doing anything

    process = guardian.close()
    assert process is not None
    await ended(spawned, registered)
    assert process.wait(15) == 0


async def test_it_ignores_the_signals_a_terminal_or_a_stop_sends(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    """Only its pipe ends it: SIGTERM/SIGINT/SIGHUP (a stop of everything, Ctrl-C) must not
    take it away before it has cleaned up after its agent."""
    guardian = Guardian("agent-a")
    guardian.start()
    registered = start(spawned)
    guardian.watch(registered)
    pid = guardian.pid
    assert pid is not None
    # Until its interpreter has set the signals to ignored, a SIGTERM would still end it: wait
    # until it reads its orders (it is then blocked on its pipe, in the read syscall).
    await eventually(lambda: _reading(pid), what="the guardian to wait on its pipe")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(pid, sig)

    process = guardian.close()
    assert process is not None
    await ended(spawned, registered)
    assert process.wait(15) == 0


async def _reading(pid: int) -> bool | None:
    try:
        ignored = int(_status(pid)["SigIgn"], 16)
    except (OSError, KeyError):
        return None
    wanted = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGHUP - 1))
    return True if ignored & wanted == wanted else None


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


async def test_a_guardian_slow_to_read_loses_no_registration(
    spawned: list[subprocess.Popen[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Registrations wait in the agent while the pipe is full; the agent never blocks."""
    guardian = Guardian("agent-a")
    guardian.start()
    pid = guardian.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # it reads nothing for now
    try:
        for i in range(60_000):  # ~1.4 MB of lines: more than the pipe holds
            guardian.watch(10_000_000 + i)
            guardian.forget(10_000_000 + i)
            if i % 1000 == 0:
                await asyncio.sleep(0)
        registered = start(spawned)
        guardian.watch(registered)
        await asyncio.sleep(0)
        assert "slow to read" in capsys.readouterr().err  # the pipe was full
    finally:
        os.kill(pid, signal.SIGCONT)

    process = guardian.close()
    assert process is not None
    await ended(spawned, registered)
    assert process.wait(15) == 0
