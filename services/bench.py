"""Benchmarks of the running system: real NATS, orchestrator and agent processes.

- latency: a chain of N `true` tasks; per hop, the time from the upstream task's TaskSucceeded
  to the downstream task's TaskStarted (the orchestrator's reaction plus the agent's pickup),
  and to the downstream command actually running (its process spawned).
- throughput: M independent `true` tasks in one DAG run with K agents, end to end.
- agent_kill: a task whose agent is killed with SIGKILL mid-run; the time from the kill to the
  task's TaskStarted on another agent (the agent's guardian hands the dispatch back at once,
  services/guardian.py; without it, the work queue's ack_wait).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from core.definitions import DagDef, DagTask, Definitions, TaskDef
from core.events import TERMINAL, AnyEvent, RunScheduled, RunSucceeded, TaskStarted, TaskSucceeded
from core.scheduling import plan_run
from services.cluster import LocalCluster
from services.nats import NatsBackplane, connect


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (whole percents: 0.5, 0.9, 0.99), interpolated between closest ranks."""
    percent = round(q * 100)
    if not 0 < percent < 100 or abs(q * 100 - percent) > 1e-9:
        raise ValueError(f"a percentile is a whole percent between 0 and 1, got {q}")
    if len(values) < 2:
        return float(values[0]) if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def chain_definitions(n: int) -> Definitions:
    tasks = {
        f"t{i:05d}": TaskDef(
            id=f"t{i:05d}", command="true", dependencies=(f"t{i - 1:05d}",) if i else ()
        )
        for i in range(n)
    }
    return Definitions(tasks=tasks)


def fanout_definitions(n: int) -> Definitions:
    entries = tuple(DagTask(id=f"t{i:05d}", command="true") for i in range(n))
    return Definitions(dags={"bench_throughput": DagDef(id="bench_throughput", tasks=entries)})


def _new_run(defs: Definitions, kind: str, target: str) -> RunScheduled:
    return plan_run(
        defs,
        kind="outcome" if kind == "outcome" else "dag",
        target=target,
        now=dt.datetime.now(dt.UTC),
        entropy=os.urandom(16),
        trigger="bench",
    )


async def _run_to_end(
    cluster: LocalCluster, defs: Definitions, kind: str, target: str
) -> list[AnyEvent]:
    assert cluster.nats_url is not None
    async with await connect(cluster.nats_url, name="cyclonetix-bench") as backplane:
        event = _new_run(defs, kind, target)
        await backplane.events.schedule_run(event)
        events: list[AnyEvent] = []
        async for _seq, e in backplane.events.follow_run(event.run_id):
            events.append(e)
            if isinstance(e, TERMINAL):
                break
    if not isinstance(events[-1], RunSucceeded):
        raise RuntimeError(f"benchmark run ended {type(events[-1]).__name__}")
    return events


def _cluster(
    defs: Definitions,
    data_dir: Path,
    log: TextIO,
    agents: int,
    concurrency: int,
    nats_url: str | None,
    replicas: int = 1,
    restart: bool = False,
) -> LocalCluster:
    def printer(role: str, line: str) -> None:
        log.write(f"{role} | {line}\n")

    return LocalCluster(
        definitions=defs,
        data_dir=data_dir,
        agents=agents,
        concurrency=concurrency,
        nats_url=nats_url,
        replicas=replicas,
        printer=printer,
        log_format="json",
        restart=restart,
    )


async def latency(
    tasks: int = 200, *, agents: int = 1, nats_url: str | None = None, replicas: int = 1
) -> dict[str, float]:
    if tasks < 2:
        raise ValueError("--tasks must be at least 2 for a hop")
    defs = chain_definitions(tasks)
    with (
        tempfile.TemporaryDirectory(prefix="cyclonetix-bench-") as tmp,
        (Path(tmp) / "roles.log").open("a") as log,
    ):
        cluster = _cluster(defs, Path(tmp), log, agents, 1, nats_url, replicas)
        await cluster.start()
        try:
            events = await _run_to_end(cluster, defs, "outcome", f"t{tasks - 1:05d}")
        finally:
            await cluster.stop()
    succeeded = {e.task_id: e for e in events if isinstance(e, TaskSucceeded)}
    started = {e.task_id: e for e in events if isinstance(e, TaskStarted) and e.delivery == 1}
    to_started, to_running = [], []
    for i in range(1, tasks):
        up, down = succeeded[f"t{i - 1:05d}"], f"t{i:05d}"
        to_started.append((started[down].ts - up.ts).total_seconds() * 1000)
        spawned = succeeded[down].spawned_at
        if spawned is not None:
            to_running.append((spawned - up.ts).total_seconds() * 1000)
    return {
        "tasks": tasks,
        "hops": len(to_started),
        "p50_ms": round(percentile(to_started, 0.5), 3),
        "p90_ms": round(percentile(to_started, 0.9), 3),
        "p99_ms": round(percentile(to_started, 0.99), 3),
        "mean_ms": round(statistics.fmean(to_started), 3),
        "to_command_p50_ms": round(percentile(to_running, 0.5), 3),
        "to_command_p90_ms": round(percentile(to_running, 0.9), 3),
        "to_command_p99_ms": round(percentile(to_running, 0.99), 3),
    }


async def throughput(
    tasks: int = 5000,
    *,
    agents: int = 2,
    concurrency: int = 8,
    nats_url: str | None = None,
    replicas: int = 1,
) -> dict[str, float]:
    defs = fanout_definitions(tasks)
    with (
        tempfile.TemporaryDirectory(prefix="cyclonetix-bench-") as tmp,
        (Path(tmp) / "roles.log").open("a") as log,
    ):
        cluster = _cluster(defs, Path(tmp), log, agents, concurrency, nats_url, replicas)
        await cluster.start()
        try:
            started = time.perf_counter()
            events = await _run_to_end(cluster, defs, "dag", "bench_throughput")
            wall = time.perf_counter() - started
        finally:
            await cluster.stop()
    seconds = (events[-1].ts - events[0].ts).total_seconds()
    return {
        "tasks": tasks,
        "agents": agents,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "wall_seconds": round(wall, 3),
        "tasks_per_s": round(tasks / seconds, 1),
    }


async def agent_kill(
    rounds: int = 5, *, nats_url: str | None = None, replicas: int = 1
) -> dict[str, float]:
    """Kill (SIGKILL) the agent running a task, `rounds` times; per round, the time from the
    kill to the task's TaskStarted on the other agent. Two agents of concurrency 1; the killed
    one is started again (and waited for) before the next round."""
    if rounds < 1:
        raise ValueError("--rounds must be at least 1")
    with (
        tempfile.TemporaryDirectory(prefix="cyclonetix-bench-") as tmp,
        (Path(tmp) / "roles.log").open("a") as log,
    ):
        marks = Path(tmp) / "marks"
        marks.mkdir()
        # The first delivery marks the run and runs until it is killed; the next one finishes.
        command = f'mkdir "{marks}/$CYCLONETIX_RUN_ID" 2>/dev/null && exec sleep 300; true'
        defs = Definitions(tasks={"victim": TaskDef(id="victim", command=command)})
        cluster = _cluster(defs, Path(tmp), log, 2, 1, nats_url, replicas, restart=True)
        serving: set[int] = set()  # agent processes that logged agent.started (pulls set up)
        write = cluster.printer
        assert write is not None

        def printer(role: str, line: str) -> None:
            if '"agent.started"' in line and role.startswith("agent"):
                process = cluster.role(role).process
                if process is not None:
                    serving.add(process.pid)
            write(role, line)

        cluster.printer = printer
        await cluster.start()
        try:
            assert cluster.nats_url is not None
            async with await connect(cluster.nats_url, name="cyclonetix-bench") as backplane:
                samples = [
                    await _kill_one(cluster, backplane, defs, marks, serving) for _ in range(rounds)
                ]
        finally:
            await cluster.stop()
    return {
        "rounds": rounds,
        "p50_ms": round(statistics.median(samples), 1),
        "max_ms": round(max(samples), 1),
        "min_ms": round(min(samples), 1),
        "mean_ms": round(statistics.fmean(samples), 1),
    }


async def _kill_one(
    cluster: LocalCluster,
    backplane: NatsBackplane,
    defs: Definitions,
    marks: Path,
    serving: set[int],
) -> float:
    await _all_agents_serving(cluster, serving)
    run = _new_run(defs, "outcome", "victim")
    await backplane.events.schedule_run(run)
    killed_at: dt.datetime | None = None
    restarted: TaskStarted | None = None
    async with asyncio.timeout(120):
        async for _seq, event in backplane.events.follow_run(run.run_id):
            if isinstance(event, TaskStarted) and killed_at is None:
                # Polled: nothing tells us when a command has created a directory.
                while not (marks / run.run_id).exists():  # noqa: ASYNC110 - the command runs
                    await asyncio.sleep(0.005)
                killed_at = dt.datetime.now(dt.UTC)
                os.kill(event.pid, signal.SIGKILL)
                serving.discard(event.pid)
            elif isinstance(event, TaskStarted) and restarted is None:
                restarted = event
            elif isinstance(event, TERMINAL):
                if not isinstance(event, RunSucceeded) or restarted is None:
                    raise RuntimeError(f"benchmark run ended {type(event).__name__}")
                break
    assert killed_at is not None and restarted is not None
    return (restarted.ts - killed_at).total_seconds() * 1000


async def _all_agents_serving(cluster: LocalCluster, serving: set[int]) -> None:
    """Every agent role's current process pulls work (a killed one was started again and has
    logged `agent.started`, which it does once its pulls are set up)."""
    roles = [r for r in cluster.roles if r.name.startswith("agent")]

    def ready() -> bool:
        return all(r.process is not None and r.process.pid in serving for r in roles)

    async with asyncio.timeout(60):
        while not ready():  # noqa: ASYNC110 - role output arrives through the printer
            await asyncio.sleep(0.05)
