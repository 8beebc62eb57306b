"""The agent against a real nats-server: as a real `python -m services.cli agent` process for
start-to-finish, signals and crashes (redelivery to another process), in-process across a NATS
restart and for nats-py's pull requests. Everything that needs only the ports' semantics (results,
timeouts, output, evaluation points, acks, concurrency, queues, cancellation) runs on the
in-memory fake in tests/unit/services/test_agent.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from core.events import (
    AnyEvent,
    Dispatch,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
)
from services import agent as agent_module
from services.agent import Agent, AgentConfig
from services.nats import NatsBackplane, connect
from services.nats.names import WORK_STREAM
from tests.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    from services.embedded_nats import EmbeddedNats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

T = TypeVar("T")
E = TypeVar("E", bound=AnyEvent)
REPO = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------------


async def wait_for_file(path: Path, timeout: float = 20.0) -> str:
    async def probe() -> str | None:
        return path.read_text() if path.exists() else None

    return await eventually(probe, timeout=timeout, what=f"file {path.name}")


def dispatch(
    run_id: str, command: str, *, task_id: str = "t", queue: str = "default", **kw: Any
) -> Dispatch:
    return Dispatch(run_id=run_id, task_id=task_id, attempt=1, queue=queue, command=command, **kw)


async def events_of(
    backplane: NatsBackplane, run_id: str, kind: type[E], n: int = 1, timeout: float = 20.0
) -> list[E]:
    """Wait until the run has at least `n` events of `kind`; returns them in log order."""

    async def probe() -> list[E] | None:
        found: list[E] = []
        for _, event in await backplane.events.history(run_id):
            if isinstance(event, kind):
                found.append(event)
        return found if len(found) >= n else None

    return await eventually(probe, timeout=timeout, what=f"{n} {kind.__name__} in {run_id}")


async def result_of(
    backplane: NatsBackplane, run_id: str, timeout: float = 20.0
) -> TaskSucceeded | TaskFailed:
    async def probe() -> TaskSucceeded | TaskFailed | None:
        for _, e in await backplane.events.history(run_id):
            if isinstance(e, TaskSucceeded | TaskFailed):
                return e
        return None

    return await eventually(probe, timeout=timeout, what=f"result of {run_id}")


async def logs_of(backplane: NatsBackplane, run_id: str, task_id: str = "t") -> bytes:
    return b"".join([chunk async for _, chunk in backplane.logs.read(run_id, task_id, 1)])


async def work_messages(backplane: NatsBackplane) -> int:
    """Dispatches still in the work stream (delivered but un-acked ones included)."""
    info = await backplane.connection.js.stream_info(WORK_STREAM)
    return int(info.state.messages)


async def no_work_left(backplane: NatsBackplane) -> bool | None:
    return True if await work_messages(backplane) == 0 else None


@contextlib.asynccontextmanager
async def running_agent(nats_url: str, **config: Any) -> AsyncIterator[Agent]:
    """An in-process agent on its own connection, stopped (gracefully) on exit."""
    conn = await connect(nats_url, name="test-agent")
    agent = Agent(conn, AgentConfig(**config))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await eventually(lambda: _registered(conn, agent.id), what="agent heartbeat", timeout=10)
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await conn.close()


async def _registered(backplane: NatsBackplane, agent_id: str) -> bool | None:
    return True if any(a.id == agent_id for a in await backplane.agents.list()) else None


class AgentProcess:
    """`python -m services.cli agent ...` as a child process, its output in a file."""

    def __init__(
        self, nats_url: str, log_file: Path, *args: str, env: dict[str, str] | None = None
    ):
        self.log_file = log_file
        argv = [sys.executable, "-m", "services.cli", "agent", "--nats-url", nats_url]
        argv += ["--log-format", "json", *args]
        with log_file.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    @property
    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    async def wait_registered(self, backplane: NatsBackplane, timeout: float = 20.0) -> str:
        async def probe() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log}")
            for info in await backplane.agents.list():
                if info.pid == self.proc.pid:
                    return info.id
            return None

        return await eventually(probe, timeout=timeout, what="agent process heartbeat")

    async def wait_exit(self, timeout: float = 30.0) -> int:
        async def probe() -> int | None:
            return self.proc.poll()

        return await eventually(probe, timeout=timeout, what="agent process exit")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def agent_processes(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(nats_url: str, *args: str, env: dict[str, str] | None = None) -> AgentProcess:
        proc = AgentProcess(nats_url, tmp_path / f"agent-{len(started)}.log", *args, env=env)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def kill_pid_from(path: Path) -> None:
    """Kill a command left behind by a SIGKILLed agent (its pid is in `path`)."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.killpg(int(path.read_text().split()[0]), signal.SIGKILL)


# -- end to end, with a real agent process ----------------------------------------------------


async def test_agent_process_runs_a_dispatch(
    backplane: NatsBackplane,
    nats_url: str,
    tmp_path: Path,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    agent = agent_processes(nats_url, "--queue", "default", "--workdir", str(tmp_path))
    agent_id = await agent.wait_registered(backplane)

    await backplane.work.dispatch(dispatch("r-e2e", "echo hello; echo oops >&2; pwd"))

    done = await result_of(backplane, "r-e2e")
    history = [e for _, e in await backplane.events.history("r-e2e")]
    assert [type(e) for e in history] == [TaskStarted, TaskSucceeded]
    started = history[0]
    assert isinstance(started, TaskStarted)
    assert (started.attempt, started.delivery, started.agent_id) == (1, 1, agent_id)
    assert started.pid == agent.proc.pid
    assert isinstance(done, TaskSucceeded)
    assert (done.attempt, done.exit_code, done.agent_id) == (1, 0, agent_id)
    assert done.output_tail == f"hello\noops\n{tmp_path.resolve()}\n"
    assert done.spawned_at is not None and done.spawned_at >= started.ts
    assert done.duration_ms > 0
    assert await logs_of(backplane, "r-e2e") == f"hello\noops\n{tmp_path.resolve()}\n".encode()
    await eventually(lambda: no_work_left(backplane), what="dispatch acked")


async def test_sigkilled_agent_task_is_redelivered_to_another_agent(
    backplane: NatsBackplane,
    nats_url: str,
    tmp_path: Path,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    # The first delivery records its shell pid and blocks; the redelivery finds the file.
    marker = tmp_path / "first"
    command = "if [ -e first ]; then echo second run; else echo $$ > first; sleep 300; fi"
    opts = ("--queue", "default", "--workdir", str(tmp_path), "--ack-wait", "2")
    first = agent_processes(nats_url, *opts)
    first_id = await first.wait_registered(backplane)
    try:
        await backplane.work.dispatch(dispatch("r-crash", command))
        await wait_for_file(marker)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    finally:
        kill_pid_from(marker)  # the orphaned command of the killed agent

    second = agent_processes(nats_url, *opts)
    second_id = await second.wait_registered(backplane)
    done = await result_of(backplane, "r-crash", timeout=30)

    assert isinstance(done, TaskSucceeded)
    assert done.agent_id == second_id
    assert done.output_tail == "second run\n"
    starts = [e for _, e in await backplane.events.history("r-crash") if isinstance(e, TaskStarted)]
    assert [(s.agent_id, s.delivery) for s in starts] == [(first_id, 1), (second_id, 2)]


def _live(pid: int) -> bool:
    """Whether `pid` runs (a zombie is dead: only its parent's reaping is missing)."""
    return Path(f"/proc/{pid}").exists() and not _is_zombie(pid)


def _session(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rfind(b")") + 2 :].split()[3])


async def test_a_sigkilled_agent_s_commands_die_with_it_whole_trees_included(
    backplane: NatsBackplane,
    nats_url: str,
    tmp_path: Path,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    """Nothing a command started outlives its SIGKILLed agent: neither what left for a session
    of its own (found by CYCLONETIX_AGENT_ID in its environment) nor what stayed in the
    command's process group with a scrubbed environment (found by its group)."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    command = (
        f"setsid {sleep} 300 & echo $! > away.tmp && mv away.tmp away; "
        f"exec env -i /bin/sh -c '{sleep} 300 & echo $$ $! > group.tmp && mv group.tmp group; wait'"
    )
    agent = agent_processes(nats_url, "--workdir", str(tmp_path))
    await agent.wait_registered(backplane)
    await backplane.work.dispatch(dispatch("r-tree", command))
    away = int(await wait_for_file(tmp_path / "away"))
    shell, child = map(int, (await wait_for_file(tmp_path / "group")).split())
    pids = {"setsid child": away, "shell": shell, "child in the group": child}
    try:
        assert _session(away) == away != _session(shell)  # it did leave the command's session
        assert all(_live(pid) for pid in pids.values())

        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait()

        async def all_gone() -> bool | None:
            return True if not any(_live(pid) for pid in pids.values()) else None

        await eventually(all_gone, timeout=15, what="the killed agent's processes to end")
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_sigkilled_agent_s_dispatch_is_handed_back_at_once(
    backplane: NatsBackplane,
    nats_url: str,
    tmp_path: Path,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    """The killed agent's guardian hands its dispatch back: another agent starts it although
    the work queue alone would wait five minutes (ack_wait) before redelivering it."""
    command = "if [ -e first ]; then echo second run; else touch first; sleep 300; fi"
    opts = ("--queue", "default", "--workdir", str(tmp_path), "--ack-wait", "300")
    first = agent_processes(nats_url, *opts)
    first_id = await first.wait_registered(backplane)
    await backplane.work.dispatch(dispatch("r-handed", command))
    await wait_for_file(tmp_path / "first")
    second = agent_processes(nats_url, *opts)
    second_id = await second.wait_registered(backplane)

    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()

    done = await result_of(backplane, "r-handed", timeout=60)
    assert isinstance(done, TaskSucceeded)
    assert (done.agent_id, done.output_tail) == (second_id, "second run\n")
    starts = [
        e for _, e in await backplane.events.history("r-handed") if isinstance(e, TaskStarted)
    ]
    assert [(s.agent_id, s.delivery) for s in starts] == [(first_id, 1), (second_id, 2)]
    assert "guardian.agent_gone" in first.log


async def test_sigterm_exits_cleanly_and_removes_the_heartbeat(
    backplane: NatsBackplane,
    nats_url: str,
    tmp_path: Path,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    agent = agent_processes(nats_url, "--workdir", str(tmp_path))
    agent_id = await agent.wait_registered(backplane)

    agent.proc.send_signal(signal.SIGTERM)

    assert await agent.wait_exit(timeout=15) == 0
    assert agent_id not in {a.id for a in await backplane.agents.list()}
    assert "Traceback" not in agent.log


async def test_sigterm_lets_a_running_task_finish(
    backplane: NatsBackplane,
    nats_url: str,
    tmp_path: Path,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    agent = agent_processes(nats_url, "--workdir", str(tmp_path), "--shutdown-grace", "60")
    await agent.wait_registered(backplane)
    await backplane.work.dispatch(
        dispatch("r-finish", "touch running; while [ ! -e go ]; do sleep 0.01; done; echo done")
    )
    await wait_for_file(tmp_path / "running")

    agent.proc.send_signal(signal.SIGTERM)
    await backplane.work.dispatch(
        dispatch("r-late", "echo too late")
    )  # a stopping agent takes no new work
    (tmp_path / "go").touch()

    assert await agent.wait_exit() == 0
    done = await result_of(backplane, "r-finish")
    assert isinstance(done, TaskSucceeded)
    assert done.output_tail == "done\n"
    assert await backplane.events.history("r-late") == []
    assert await work_messages(backplane) == 1  # still there for another agent


async def test_tasks_still_running_after_the_grace_are_handed_back(
    backplane: NatsBackplane,
    nats_url: str,
    tmp_path: Path,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    command = "if [ -e first ]; then echo second run; else touch first; sleep 300; fi"
    first = agent_processes(
        nats_url, "--workdir", str(tmp_path), "--shutdown-grace", "0.2", "--kill-grace", "1"
    )
    first_id = await first.wait_registered(backplane)
    await backplane.work.dispatch(dispatch("r-handback", command))
    await wait_for_file(tmp_path / "first")

    first.proc.send_signal(signal.SIGTERM)
    assert await first.wait_exit() == 0
    assert await work_messages(backplane) == 1  # nak'ed, not acked: there for another agent

    second = agent_processes(nats_url, "--workdir", str(tmp_path))
    second_id = await second.wait_registered(backplane)
    done = await result_of(backplane, "r-handback")
    assert isinstance(done, TaskSucceeded)
    assert done.output_tail == "second run\n"
    starts = [
        e for _, e in await backplane.events.history("r-handback") if isinstance(e, TaskStarted)
    ]
    assert [(s.agent_id, s.delivery) for s in starts] == [(first_id, 1), (second_id, 2)]
    assert b"handed back" in await logs_of(backplane, "r-handback")


async def test_second_signal_kills_at_once(
    backplane: NatsBackplane,
    nats_url: str,
    tmp_path: Path,
    agent_processes: Callable[..., AgentProcess],
) -> None:
    agent = agent_processes(
        nats_url, "--workdir", str(tmp_path), "--shutdown-grace", "300", "--kill-grace", "300"
    )
    await agent.wait_registered(backplane)
    await backplane.work.dispatch(dispatch("r-kill", "trap '' TERM; echo $$ > pid; sleep 300"))
    await wait_for_file(tmp_path / "pid")
    shell = int((tmp_path / "pid").read_text())

    agent.proc.send_signal(signal.SIGINT)
    await eventually(
        lambda: _async_value(True if "agent.waiting_for_tasks" in agent.log else None),
        what="agent waiting for its task",
    )
    agent.proc.send_signal(signal.SIGINT)

    assert await agent.wait_exit(timeout=15) == 0
    assert not Path(f"/proc/{shell}").exists() or _is_zombie(shell)
    assert await work_messages(backplane) == 1  # handed back


# -- in-process: NATS restarts and nats-py's pull requests ------------------------------------


async def test_agent_survives_a_nats_restart(
    backplane: NatsBackplane, nats_url: str, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async with running_agent(nats_url, workdir=tmp_path):
        await backplane.work.dispatch(
            dispatch("r-across", "touch running; while [ ! -e go ]; do sleep 0.01; done; echo ok")
        )
        await wait_for_file(tmp_path / "running")
        nats_server.stop()
        nats_server.start()  # same port, same store
        (tmp_path / "go").touch()  # the result is appended once the agent has reconnected
        across = await result_of(backplane, "r-across", timeout=30)
        await backplane.work.dispatch(dispatch("r-after", "echo after"))
        after = await result_of(backplane, "r-after", timeout=30)
    assert isinstance(across, TaskSucceeded)
    assert across.output_tail == "ok\n"
    assert isinstance(after, TaskSucceeded)


@pytest.mark.parametrize("fetch_timeout", [3600.0, 0.2])
async def test_an_idle_agent_takes_a_dispatch_from_its_waiting_pull(
    backplane: NatsBackplane,
    nats_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fetch_timeout: float,
) -> None:
    """An idle agent keeps a pull outstanding that hands it a dispatch as it arrives. With an
    hour-long fetch timeout nothing may wait for the pull to expire (a batch pull sitting on an
    unfilled batch, polling between pulls); with a short one, the pull is renewed, also after
    the agent sat idle through several. How fast pickup is, is `cyclonetix bench latency`'s job;
    the deadlines here only stop waiting."""
    monkeypatch.setattr(agent_module, "FETCH_TIMEOUT", fetch_timeout)
    conn = await connect(nats_url, name="test-agent")
    agent = Agent(conn, AgentConfig(workdir=tmp_path))
    stop, kill = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(stop, kill))
    try:
        await eventually(lambda: _registered(conn, agent.id), what="agent heartbeat", timeout=10)
        for i in range(3):
            await asyncio.sleep(0.5 * i)  # idle through 0, 2 and 5 short fetch timeouts
            await backplane.work.dispatch(dispatch(f"r-idle{i}", "true"))
            (done,) = await events_of(backplane, f"r-idle{i}", TaskSucceeded, timeout=30)
            assert done.agent_id == agent.id
    finally:
        stop.set()
        kill.set()  # no waiting for the outstanding pull to expire
        await asyncio.wait_for(task, 30)
        await conn.close()


async def _async_value(value: T | None) -> T | None:
    return value


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"Z"
