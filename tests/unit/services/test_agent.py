"""The agent on the in-memory backplane (tests.fakes), running real `sh` commands.

Everything here needs only the ports' semantics, which the contract suite checks on the fake and
on NATS alike; what needs a real nats-server or a real agent process (signals, SIGKILL,
redelivery across processes, a NATS restart, nats-py's pull requests) is in
tests/integration/test_agent.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from core.events import (
    AnyEvent,
    Dispatch,
    EvaluationResult,
    TaskCancelled,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
)
from services import agent as agent_module
from services.agent import Agent, AgentConfig
from tests.fakes import MemoryBackplane, MemoryServer
from tests.fakes.work import MemoryWorkItem
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

E = TypeVar("E", bound=AnyEvent)
REPO = Path(__file__).resolve().parents[3]
FOREVER = 10**9  # appends that keep failing until a test clears the fault


@pytest.fixture(autouse=True)
def short_pulls(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle pull is renewed every 50 ms instead of every second: a stopping agent waits for
    its outstanding pull to end, and on the fake a pull costs nothing."""
    monkeypatch.setattr(agent_module, "FETCH_TIMEOUT", 0.05)


# -- helpers ----------------------------------------------------------------------------------


def dispatch(
    run_id: str, command: str, *, task_id: str = "t", queue: str = "default", **kw: Any
) -> Dispatch:
    return Dispatch(run_id=run_id, task_id=task_id, attempt=1, queue=queue, command=command, **kw)


async def wait_for_file(path: Path) -> str:
    async def probe() -> str | None:
        return path.read_text() if path.exists() else None

    return await eventually(probe, what=f"file {path.name}")


async def events_of(bp: MemoryBackplane, run_id: str, kind: type[E], n: int = 1) -> list[E]:
    """Wait until the run has at least `n` events of `kind`; returns them in log order."""

    async def probe() -> list[E] | None:
        found: list[E] = []
        for _, event in await bp.events.history(run_id):
            if isinstance(event, kind):
                found.append(event)
        return found if len(found) >= n else None

    return await eventually(probe, what=f"{n} {kind.__name__} in {run_id}")


async def result_of(bp: MemoryBackplane, run_id: str) -> TaskSucceeded | TaskFailed:
    async def probe() -> TaskSucceeded | TaskFailed | None:
        for _, e in await bp.events.history(run_id):
            if isinstance(e, TaskSucceeded | TaskFailed):
                return e
        return None

    return await eventually(probe, what=f"result of {run_id}")


async def results(bp: MemoryBackplane, run_id: str) -> list[AnyEvent]:
    return [
        e
        for _, e in await bp.events.history(run_id)
        if isinstance(e, TaskSucceeded | TaskFailed | TaskCancelled)
    ]


async def logs_of(bp: MemoryBackplane, run_id: str, task_id: str = "t") -> bytes:
    return b"".join([chunk async for _, chunk in bp.logs.read(run_id, task_id, 1)])


def stored_dispatches(server: MemoryServer) -> int:
    """Dispatches still in the work queue, delivered but un-acked ones included."""
    return len(server.work.messages)


async def no_work_left(server: MemoryServer) -> bool | None:
    return True if stored_dispatches(server) == 0 else None


@contextlib.asynccontextmanager
async def running_agent(server: MemoryServer, **config: Any) -> AsyncIterator[Agent]:
    """An agent on its own connection, as in its own process; stopped gracefully on exit."""
    conn = server.connect("agent")
    agent = Agent(conn, AgentConfig(**config))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:

        async def registered() -> bool | None:
            return True if any(a.id == agent.id for a in await conn.agents.list()) else None

        await eventually(registered, what="agent heartbeat")
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await conn.close()


# -- results ----------------------------------------------------------------------------------


async def test_failing_command(server: MemoryServer, bp: MemoryBackplane, tmp_path: Path) -> None:
    async with running_agent(server, workdir=tmp_path):
        await bp.work.dispatch(dispatch("r-fail", "echo bad >&2; exit 3"))
        done = await result_of(bp, "r-fail")
        await eventually(lambda: no_work_left(server), what="failed dispatch acked too")
    assert isinstance(done, TaskFailed)
    assert (done.reason, done.exit_code, done.output_tail) == ("exit", 3, "bad\n")
    assert done.message == "exit code 3"


async def test_timeout(server: MemoryServer, bp: MemoryBackplane, tmp_path: Path) -> None:
    async with running_agent(server, workdir=tmp_path, kill_grace=1):
        await bp.work.dispatch(dispatch("r-timeout", "echo waiting; sleep 60", timeout_seconds=0.3))
        done = await result_of(bp, "r-timeout")
    assert isinstance(done, TaskFailed)
    assert done.reason == "timeout"
    assert done.exit_code == 128 + signal.SIGTERM
    assert done.output_tail == "waiting\n"
    assert "timed out" in done.message


async def test_spawn_error(server: MemoryServer, bp: MemoryBackplane, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with running_agent(server, workdir=workdir):
        workdir.rmdir()
        await bp.work.dispatch(dispatch("r-spawn", "true"))
        done = await result_of(bp, "r-spawn")
    assert isinstance(done, TaskFailed)
    assert (done.reason, done.exit_code, done.spawned_at) == ("spawn_error", None, None)
    assert "does not exist" in done.message


async def test_evaluation_point(server: MemoryServer, bp: MemoryBackplane, tmp_path: Path) -> None:
    decision = '{"next_tasks": ["train"], "context_updates": {"MODEL": "m1"}}'
    async with running_agent(server, workdir=tmp_path):
        await bp.work.dispatch(
            dispatch(
                "r-eval", f"echo '{decision}' > \"$CYCLONETIX_EVAL_RESULT\"", evaluation_point=True
            )
        )
        await bp.work.dispatch(
            dispatch(
                "r-eval-bad", "echo '{oops' > \"$CYCLONETIX_EVAL_RESULT\"", evaluation_point=True
            )
        )
        good = await result_of(bp, "r-eval")
        bad = await result_of(bp, "r-eval-bad")
    assert isinstance(good, TaskSucceeded)
    assert good.evaluation == EvaluationResult(
        next_tasks=("train",), context_updates={"MODEL": "m1"}
    )
    assert isinstance(bad, TaskFailed)
    assert bad.reason == "invalid_evaluation"
    assert "invalid evaluation result" in bad.message


async def test_agent_env_reaches_the_command_under_the_dispatch_env(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_ONLY", "from-agent")
    monkeypatch.setenv("SHARED", "agent")
    monkeypatch.setenv("CYCLONETIX_TASK_ID", "agent")
    monkeypatch.setenv("CYCLONETIX_EVAL_RESULT", "/stale/path")
    async with running_agent(server, workdir=tmp_path):
        await bp.work.dispatch(
            dispatch(
                "r-env",
                'echo "$AGENT_ONLY|$SHARED|$DISPATCH_ONLY|$CYCLONETIX_RUN_ID|$CYCLONETIX_TASK_ID'
                '|$CYCLONETIX_ATTEMPT|${CYCLONETIX_EVAL_RESULT:-none}"',
                task_id="env_task",
                env={"SHARED": "dispatch", "DISPATCH_ONLY": "d", "CYCLONETIX_RUN_ID": "spoofed"},
            )
        )
        done = await result_of(bp, "r-env")
    assert done.output_tail == "from-agent|dispatch|d|r-env|env_task|1|none\n"


async def test_large_output_is_bounded_and_readable(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    limit = 1_000_000
    async with running_agent(server, workdir=tmp_path, max_output_bytes=limit):
        await bp.work.dispatch(
            dispatch("r-big", "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo tail-line")
        )
        done = await result_of(bp, "r-big")
    assert isinstance(done, TaskSucceeded)
    assert done.output_tail.endswith("a\ntail-line\n")
    note = f"\n[cyclonetix: output truncated after {limit} bytes; 2000011 more bytes discarded]\n"
    assert await logs_of(bp, "r-big") == b"a" * limit + note.encode()


async def test_binary_output_round_trips(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    payload = os.urandom(200_000)
    (tmp_path / "blob").write_bytes(payload)
    async with running_agent(server, workdir=tmp_path):
        await bp.work.dispatch(dispatch("r-bin", "cat blob"))
        done = await result_of(bp, "r-bin")
    assert isinstance(done, TaskSucceeded)
    assert await logs_of(bp, "r-bin") == payload


# -- acknowledgement ----------------------------------------------------------------------------


async def test_a_dispatch_is_acked_only_after_its_result_is_stored(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the result cannot be stored, the dispatch stays un-acked (a crash now means
    redelivery, not a lost result); once appends work again, the result is stored, then acked."""
    monkeypatch.setattr(agent_module, "ERROR_BACKOFF", 0.02)  # retry the append quickly
    async with running_agent(server, workdir=tmp_path):
        await bp.work.dispatch(
            dispatch("r-ack", "touch running; while [ ! -e go ]; do sleep 0.01; done; echo done")
        )
        await events_of(bp, "r-ack", TaskStarted)
        await wait_for_file(tmp_path / "running")
        server.faults.fail_appends(FOREVER)  # from now on no event can be stored
        (tmp_path / "go").touch()

        async def result_append_failed_twice() -> bool | None:
            return True if server.faults.failing_appends <= FOREVER - 2 else None

        await eventually(result_append_failed_twice, what="the result's append to fail twice")
        assert await results(bp, "r-ack") == []
        assert stored_dispatches(server) == 1  # not acked: its result is not stored

        server.faults.failing_appends = 0  # appends work again
        done = await result_of(bp, "r-ack")
        await eventually(lambda: no_work_left(server), what="the dispatch to be acked")
    assert isinstance(done, TaskSucceeded)
    assert done.output_tail == "done\n"
    assert len(await results(bp, "r-ack")) == 1


async def test_poison_message_is_dropped_and_work_goes_on(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    async with running_agent(server, workdir=tmp_path):
        server.inject_dispatch_bytes("default", b"{not a dispatch")
        await bp.work.dispatch(dispatch("r-after-poison", "echo fine"))
        done = await result_of(bp, "r-after-poison")
        assert isinstance(done, TaskSucceeded)
        await eventually(lambda: no_work_left(server), what="poison message removed")


async def test_in_progress_keeps_a_long_task_from_redelivery(
    server: MemoryServer,
    bp: MemoryBackplane,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A command running for several ack_waits is not redelivered to the idle second agent:
    the agent renews the delivery (`in_progress`) well within ack_wait."""
    renewals = 0
    renew = MemoryWorkItem.in_progress

    async def counted(item: MemoryWorkItem) -> None:
        nonlocal renewals
        renewals += 1
        await renew(item)

    monkeypatch.setattr(MemoryWorkItem, "in_progress", counted)
    ack_wait = 0.6  # renewed every 0.2 s
    async with (
        running_agent(server, workdir=tmp_path, ack_wait=ack_wait),
        running_agent(server, workdir=tmp_path, ack_wait=ack_wait),
    ):
        await bp.work.dispatch(
            dispatch("r-long", "touch running; while [ ! -e go ]; do sleep 0.01; done; echo ok")
        )
        await wait_for_file(tmp_path / "running")
        counted_from = renewals

        async def three_ack_waits_passed() -> bool | None:
            # 9 renewals at ack_wait/3 each: the command ran through three ack_waits.
            return True if renewals - counted_from >= 9 else None

        await eventually(three_ack_waits_passed, what="the delivery to be renewed 9 times")
        (tmp_path / "go").touch()
        done = await result_of(bp, "r-long")
    assert isinstance(done, TaskSucceeded)
    starts = await events_of(bp, "r-long", TaskStarted)
    assert [s.delivery for s in starts] == [1]


# -- queues, concurrency, cancellation --------------------------------------------------------


async def test_queue_routing(server: MemoryServer, bp: MemoryBackplane, tmp_path: Path) -> None:
    async with running_agent(server, workdir=tmp_path):
        await bp.work.dispatch(dispatch("r-gpu", "echo on gpu", queue="gpu"))
        await bp.work.dispatch(dispatch("r-default", "echo on default"))
        # Once the later default dispatch is done, the default agent has had every chance to
        # take the gpu one; it did not, and the gpu dispatch is still waiting.
        await result_of(bp, "r-default")
        assert await bp.events.history("r-gpu") == []
        assert (await bp.work.depths()).get("gpu") == 1
        async with running_agent(server, workdir=tmp_path, queues=("gpu",)) as gpu_agent:
            done = await result_of(bp, "r-gpu")
    assert isinstance(done, TaskSucceeded)
    assert done.agent_id == gpu_agent.id
    assert done.output_tail == "on gpu\n"


async def test_concurrency_runs_in_parallel_and_never_more(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    # Each command announces itself and waits for "go": finishing needs all of them running.
    command = "touch started-$CYCLONETIX_RUN_ID; while [ ! -e go ]; do sleep 0.01; done"
    async with running_agent(server, workdir=tmp_path, concurrency=3) as agent:
        for i in range(4):
            await bp.work.dispatch(dispatch(f"r-par{i}", command))

        async def three_running() -> bool | None:
            return True if len(list(tmp_path.glob("started-*"))) == 3 else None

        await eventually(three_running, what="three commands running at once")
        assert len(agent.running) == 3
        assert (await bp.work.depths())["default"] == 1  # the fourth is not even delivered
        heartbeat = next(a for a in await bp.agents.list() if a.id == agent.id)
        assert heartbeat.queues == ["default"]

        (tmp_path / "go").touch()
        done = [await result_of(bp, f"r-par{i}") for i in range(4)]
    assert all(isinstance(r, TaskSucceeded) for r in done)


async def test_two_queues_share_the_concurrency(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    async with running_agent(
        server, workdir=tmp_path, queues=("default", "gpu"), concurrency=2
    ) as agent:
        await bp.work.dispatch(dispatch("r-q1", "echo one", queue="gpu"))
        await bp.work.dispatch(dispatch("r-q2", "echo two"))
        one, two = await result_of(bp, "r-q1"), await result_of(bp, "r-q2")
    assert (one.agent_id, two.agent_id) == (agent.id, agent.id)
    assert (one.output_tail, two.output_tail) == ("one\n", "two\n")


async def test_cancel_run_kills_its_commands_and_reports_task_cancelled(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    async with running_agent(server, workdir=tmp_path, kill_grace=1) as agent:
        await bp.work.dispatch(dispatch("r-cancel", "touch running; sleep 300"))
        await bp.work.dispatch(
            dispatch("r-other", "touch other; while [ ! -e go ]; do sleep 0.01; done")
        )
        await wait_for_file(tmp_path / "running")
        await wait_for_file(tmp_path / "other")

        assert agent.cancel_run("r-cancel") == 1
        (cancelled,) = await events_of(bp, "r-cancel", TaskCancelled)
        assert (cancelled.agent_id, cancelled.attempt) == (agent.id, 1)

        async def only_the_other() -> bool | None:  # (its slot is freed after the report)
            return True if agent.running == ["r-other/t/1"] else None

        # Other runs are untouched.
        await eventually(only_the_other, timeout=10, what="the cancelled attempt to end")
        (tmp_path / "go").touch()
        assert isinstance(await result_of(bp, "r-other"), TaskSucceeded)
        await eventually(lambda: no_work_left(server), what="cancelled dispatch acked")


async def test_an_announced_cancel_reaches_the_agent(
    server: MemoryServer, bp: MemoryBackplane, tmp_path: Path
) -> None:
    async with running_agent(server, workdir=tmp_path, kill_grace=1) as agent:
        await bp.work.dispatch(dispatch("r-announced", "touch running; sleep 300"))
        await wait_for_file(tmp_path / "running")
        await bp.cancels.announce("r-announced")
        (cancelled,) = await events_of(bp, "r-announced", TaskCancelled)
    assert cancelled.agent_id == agent.id


# -- the command line -------------------------------------------------------------------------


def test_no_nats_server_is_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYCLONETIX_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "agent"],
        cwd=tmp_path,  # no .cyclonetix/runtime.json here
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "cyclonetix: error: no NATS server: pass --nats-url, set CYCLONETIX_NATS_URL, "
        "or run 'cyclonetix dev' in this folder\n"
    )
