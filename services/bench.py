"""Benchmarks of the running system: real NATS, orchestrator and agent processes.

- latency: a chain of N `true` tasks; per hop, the time from the upstream task's TaskSucceeded
  to the downstream task's TaskStarted (the orchestrator's reaction plus the agent's pickup),
  and to the downstream command actually running (its process spawned).
- throughput: M independent `true` tasks in one DAG run with K agents, end to end.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from core.definitions import DagDef, DagTask, Definitions, TaskDef
from core.events import TERMINAL, AnyEvent, RunSucceeded, TaskStarted, TaskSucceeded
from core.scheduling import plan_run
from services.cluster import LocalCluster
from services.nats import connect


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


async def _run_to_end(
    cluster: LocalCluster, defs: Definitions, kind: str, target: str
) -> list[AnyEvent]:
    assert cluster.nats_url is not None
    async with await connect(cluster.nats_url, name="cyclonetix-bench") as backplane:
        event = plan_run(
            defs,
            kind="outcome" if kind == "outcome" else "dag",
            target=target,
            now=dt.datetime.now(dt.UTC),
            entropy=os.urandom(16),
            trigger="bench",
        )
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
        restart=False,
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
