"""The system end to end: real nats-server, orchestrator and agent processes, real commands."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
import sys

import pytest

from core.definitions import RetryPolicy, TaskDef
from core.events import (
    AnyEvent,
    RunCancelled,
    RunCancelRequested,
    RunFailed,
    RunSucceeded,
    TaskCancelled,
    TaskFailed,
    TaskRetryScheduled,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    each_queued,
)
from tests.e2e.conftest import System, child_env, tasks

pytestmark = pytest.mark.e2e

AGENT = [sys.executable, "-m", "services.cli", "agent"]
SLOW = "sleep 0.6"
DIAMOND = tasks(
    TaskDef(id="a", command="true"),
    TaskDef(id="b", command=SLOW, dependencies=("a",)),
    TaskDef(id="c", command=SLOW, dependencies=("a",)),
    TaskDef(id="d", command="true", dependencies=("b", "c")),
)


async def test_diamond_runs_a_then_b_and_c_in_parallel_on_two_agents_then_d(
    system: System,
) -> None:
    async with system(DIAMOND, agents=2, concurrency=1) as sys_:
        events = await sys_.until_end(await sys_.schedule("d"))
    started = {e.task_id: e for e in events if isinstance(e, TaskStarted)}
    done = {e.task_id: e for e in events if isinstance(e, TaskSucceeded)}
    assert isinstance(events[-1], RunSucceeded)
    assert done["a"].ts <= started["b"].ts and done["a"].ts <= started["c"].ts
    # b and c overlap in time, on different agents
    assert started["b"].ts < done["c"].ts and started["c"].ts < done["b"].ts
    assert started["b"].agent_id != started["c"].agent_id
    assert started["d"].ts >= max(done["b"].ts, done["c"].ts)


async def test_only_the_ancestors_of_the_target_run(system: System) -> None:
    async with system(DIAMOND) as sys_:
        events = await sys_.until_end(await sys_.schedule("b"))
    ran = {e.task_id for e in events if isinstance(e, TaskSucceeded)}
    assert ran == {"a", "b"}
    assert isinstance(events[-1], RunSucceeded)


async def test_a_gpu_task_waits_for_a_gpu_agent_and_never_runs_on_default(
    system: System,
) -> None:
    defs = tasks(
        TaskDef(id="cpu", command="true"),
        TaskDef(id="gpu_job", command="echo on-gpu", queue="gpu"),
        TaskDef(id="both", command="true", dependencies=("cpu", "gpu_job")),
    )
    async with system(defs, queues=["default"]) as sys_:
        run_id = await sys_.schedule("both")
        await sys_.wait_for(run_id, lambda e: isinstance(e, TaskSucceeded) and e.task_id == "cpu")
        history = [e for _, e in await sys_.backplane.events.history(run_id)]
        assert any(q.task_id == "gpu_job" for e in history for q in each_queued(e))
        assert not any(isinstance(e, TaskStarted) and e.task_id == "gpu_job" for e in history)
        assert (await sys_.backplane.work.depths()).get("gpu") == 1
        assert sys_.cluster.nats_url is not None
        gpu_agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "agent",
                "--queue",
                "gpu",
                "--nats-url",
                sys_.cluster.nats_url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=child_env(),
        )
        try:
            events = await sys_.until_end(run_id)
        finally:
            gpu_agent.terminate()
            gpu_agent.wait(10)
    gpu_start = next(e for e in events if isinstance(e, TaskStarted) and e.task_id == "gpu_job")
    cpu_start = next(e for e in events if isinstance(e, TaskStarted) and e.task_id == "cpu")
    assert gpu_start.agent_id != cpu_start.agent_id
    assert isinstance(events[-1], RunSucceeded)


async def test_environment_precedence_reaches_the_command(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.definitions import ContextDef, DagDef, DagTask, Definitions

    monkeypatch.setenv("CX_AGENT_ONLY", "agent")
    monkeypatch.setenv("CX_LEVEL", "agent")
    show = 'echo "$CX_AGENT_ONLY $CX_CTX_ONLY $CX_LEVEL $CX_PARAM $CYCLONETIX_TASK_ID"'
    defs = Definitions(
        tasks={"show": TaskDef(id="show", command=show, parameters={"CX_PARAM": "task"})},
        contexts={
            "base": ContextDef(id="base", variables={"CX_CTX_ONLY": "ctx", "CX_LEVEL": "base"}),
            "prod": ContextDef(id="prod", extends="base", variables={"CX_LEVEL": "context"}),
        },
        dags={
            "d": DagDef(
                id="d",
                context="prod",
                tasks=(DagTask(id="show", parameters={"CX_PARAM": "dag"}),),
            )
        },
    )
    async with system(defs) as sys_:
        outcome = await sys_.until_end(await sys_.schedule("show", context_id="prod"))
        dag = await sys_.until_end(await sys_.schedule("d", kind="dag"))
        override = await sys_.until_end(
            await sys_.schedule("d", kind="dag", params=["show.CX_PARAM=cli"])
        )

    def output(events: list[AnyEvent]) -> str:
        return next(e for e in events if isinstance(e, TaskSucceeded)).output_tail.strip()

    assert output(outcome) == "agent ctx context task show"
    assert output(dag) == "agent ctx context dag show"
    assert output(override) == "agent ctx context cli show"


async def test_a_failing_middle_task_fails_the_run_and_skips_its_dependents(
    system: System,
) -> None:
    defs = tasks(
        TaskDef(id="a", command="true"),
        TaskDef(id="b", command="exit 3", dependencies=("a",)),
        TaskDef(id="c", command="true", dependencies=("b",)),
        TaskDef(id="d", command="true", dependencies=("c",)),
    )
    async with system(defs) as sys_:
        events = await sys_.until_end(await sys_.schedule("d"))
    failed = next(e for e in events if isinstance(e, TaskFailed))
    assert failed.task_id == "b" and failed.exit_code == 3 and failed.reason == "exit"
    assert {e.task_id for e in events if isinstance(e, TaskSkipped)} == {"c", "d"}
    assert not any(isinstance(e, TaskStarted) and e.task_id in ("c", "d") for e in events)
    end = events[-1]
    assert isinstance(end, RunFailed) and end.failed_tasks == ("b",)
    # The skips are decided in the one pass that saw the failure (a pass decides with one
    # `now`); the run's end is appended, conditionally, once they are stored.
    after = events[events.index(failed) + 1 :]
    assert [type(e) for e in after] == [TaskSkipped, TaskSkipped, RunFailed]
    assert len({e.ts for e in after[:2]}) == 1


async def test_retries_with_backoff_are_visible_as_events(system: System) -> None:
    flaky = 'test "$CYCLONETIX_ATTEMPT" -ge 3'
    policy = RetryPolicy(count=3, delay_seconds=0.3, backoff=2, max_delay_seconds=5)
    defs = tasks(TaskDef(id="flaky", command=flaky, retries=policy))
    async with system(defs) as sys_:
        events = await sys_.until_end(await sys_.schedule("flaky"))
    retries = [e for e in events if isinstance(e, TaskRetryScheduled)]
    assert [r.attempt for r in retries] == [2, 3]
    queued = {q.attempt: q for e in events for q in each_queued(e)}
    for retry, delay in zip(retries, (0.3, 0.6), strict=True):
        assert abs((retry.not_before - retry.ts).total_seconds() - delay) < 0.01
        assert queued[retry.attempt].ts >= retry.not_before
    assert isinstance(events[-1], RunSucceeded)
    assert [e.attempt for e in events if isinstance(e, TaskFailed)] == [1, 2]


async def test_a_timeout_kills_a_command_that_ignores_sigterm(system: System) -> None:
    stubborn = "trap '' TERM; sleep 60 & wait; sleep 60"
    defs = tasks(TaskDef(id="stubborn", command=stubborn, timeout_seconds=1))
    async with system(defs) as sys_:
        events = await sys_.until_end(await sys_.schedule("stubborn"), timeout=40)
    failed = next(e for e in events if isinstance(e, TaskFailed))
    assert failed.reason == "timeout"
    # SIGTERM was ignored, so the grace ran out and SIGKILL ended it (the 40 s above only stops
    # waiting: without the kill the command would run for two minutes).
    assert failed.exit_code == 128 + signal.SIGKILL
    assert isinstance(events[-1], RunFailed)


async def test_large_and_binary_output_is_captured_and_bounded(system: System) -> None:
    defs = tasks(
        TaskDef(id="big", command="head -c 25000000 /dev/zero | tr '\\0' x; echo done"),
        TaskDef(id="binary", command="printf '\\000\\001\\377\\376caf\\303\\251'"),
    )
    async with system(defs) as sys_:
        big_run = await sys_.schedule("big")
        bin_run = await sys_.schedule("binary")
        big_events = await sys_.until_end(big_run)
        await sys_.until_end(bin_run)
        big = b"".join([c async for _, c in sys_.backplane.logs.read(big_run, "big")])
        binary = b"".join([c async for _, c in sys_.backplane.logs.read(bin_run, "binary")])
    assert isinstance(big_events[-1], RunSucceeded)
    assert 10 * 1024 * 1024 <= len(big) < 10 * 1024 * 1024 + 4096
    assert b"truncated" in big[-400:]
    assert binary == b"\x00\x01\xff\xfecaf\xc3\xa9"


async def test_an_evaluation_point_extends_the_run(system: System) -> None:
    decide = 'printf \'{"next_tasks": ["extra"]}\' > "$CYCLONETIX_EVAL_RESULT"'
    defs = tasks(
        TaskDef(id="check", command=decide, evaluation_point=True),
        TaskDef(id="extra", command="echo added"),
    )
    async with system(defs) as sys_:
        events = await sys_.until_end(await sys_.schedule("check"))
    assert {e.task_id for e in events if isinstance(e, TaskSucceeded)} == {"check", "extra"}
    assert isinstance(events[-1], RunSucceeded)


async def test_many_runs_at_once_all_end(system: System) -> None:
    async with system(DIAMOND, agents=2, concurrency=4) as sys_:
        run_ids = [await sys_.schedule("d", params=["x=1"]) for _ in range(10)]
        ends = await asyncio.gather(*(sys_.until_end(r) for r in run_ids))
    assert all(isinstance(events[-1], RunSucceeded) for events in ends)


async def test_cancel_kills_running_commands_and_ends_the_run_cancelled(system: System) -> None:
    defs = tasks(
        TaskDef(id="long", command="sleep 60"),
        TaskDef(id="after", command="true", dependencies=("long",)),
    )
    async with system(defs) as sys_:
        run_id = await sys_.schedule("after")
        await sys_.wait_for(run_id, lambda e: isinstance(e, TaskStarted))
        await sys_.backplane.events.append(
            RunCancelRequested(run_id=run_id, ts=dt.datetime.now(dt.UTC), reason="test")
        )
        events = await sys_.until_end(run_id, timeout=20)
    assert isinstance(events[-1], RunCancelled)
    cancelled = next(e for e in events if isinstance(e, TaskCancelled))
    assert cancelled.task_id == "long" and cancelled.agent_id  # killed by its agent
    assert any(isinstance(e, TaskSkipped) and e.task_id == "after" for e in events)
