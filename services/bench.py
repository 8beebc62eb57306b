"""Benchmarks of the running system: real NATS, orchestrator and agent processes.

- latency: a chain of N `true` tasks; per hop, the time from the upstream task's TaskSucceeded
  to the downstream task's TaskStarted (the orchestrator's reaction plus the agent's pickup),
  and to the downstream command actually running (its process spawned).
- throughput: M independent `true` tasks in one DAG run with K agents, end to end.
- agent_kill: a task whose agent is killed with SIGKILL mid-run; the time from the kill to the
  task's TaskStarted on another agent (the agent's guardian hands the dispatch back at once,
  services/guardian.py; without it, the work queue's ack_wait).

Each also reports the memory of every process taking part (`RssSampler`): `peak_rss_mb` per
role (orchestrator, agent-N, nats, projector, ui as present; `bench` is this process) and
`rss_mb`, each role's resident set over time, sampled every 0.1 s from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import resource
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

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


RSS_INTERVAL_S = 0.1
SERIES_POINTS = 1000  # at most this many points in a series over time (`completed_over_time`)


def _status_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of `pid` in kB, from /proc; None once it has exited (or off Linux)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (KeyError, ValueError, IndexError):  # a zombie has no memory left
        return None


def own_peak_rss_mb() -> float:
    """This process's peak resident set (getrusage: kB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class RssSampler:
    """Every `interval` seconds, the resident set of each process `pids()` names (role -> pid;
    a role started again is followed under its name), read from /proc/<pid>/status: VmRSS for
    the series, VmHWM (the kernel's high-water mark) for the peak. This process is `bench`.
    Use as `async with`; `figures()` after."""

    def __init__(
        self, pids: Callable[[], Mapping[str, int | None]], interval: float = RSS_INTERVAL_S
    ) -> None:
        self.pids = pids
        self.interval = interval
        self.started = time.monotonic()
        self.series: dict[str, list[list[float]]] = {}
        self.peak_kb: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        at = round(time.monotonic() - self.started, 2)
        for role, pid in {**self.pids(), "bench": os.getpid()}.items():
            read = None if pid is None else _status_kb(pid)
            if read is None:
                continue
            rss, hwm = read
            self.series.setdefault(role, []).append([at, round(rss / 1024, 1)])
            self.peak_kb[role] = max(self.peak_kb.get(role, 0), hwm, rss)

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> RssSampler:
        self.started = time.monotonic()
        self.task = asyncio.ensure_future(self._loop())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def figures(self) -> dict[str, Any]:
        """`peak_rss_mb` per role (`bench`: this process, by getrusage) and `rss_mb`: per role,
        [seconds since the start, MB] every `interval`."""
        peaks = {role: round(kb / 1024, 1) for role, kb in self.peak_kb.items()}
        peaks["bench"] = max(peaks.get("bench", 0.0), own_peak_rss_mb())
        return {"peak_rss_mb": peaks, "rss_interval_s": self.interval, "rss_mb": self.series}


def cluster_pids(cluster: LocalCluster) -> dict[str, int | None]:
    """The pid of each role process of `cluster` that is running, and of its own NATS server."""
    pids: dict[str, int | None] = {
        role.name: role.process.pid
        for role in cluster.roles
        if role.process is not None and role.process.returncode is None
    }
    if cluster.nats is not None:
        pids["nats"] = cluster.nats.pid
    return pids


def completed_over_time(
    start: dt.datetime, done: Sequence[dt.datetime], step: float = RSS_INTERVAL_S
) -> list[list[float]]:
    """[seconds since `start`, tasks done by then] every `step` seconds (coarser when the run
    is long: at most SERIES_POINTS points), ending with the last one done."""
    offsets = sorted((ts - start).total_seconds() for ts in done)
    if not offsets:
        return []
    step = max(step, offsets[-1] / SERIES_POINTS)
    series: list[list[float]] = []
    count, t = 0, 0.0
    while t < offsets[-1]:
        while count < len(offsets) and offsets[count] <= t:
            count += 1
        series.append([round(t, 3), count])
        t += step
    series.append([round(offsets[-1], 3), len(offsets)])
    return series


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
) -> dict[str, Any]:
    """Figures (percentiles), every hop's sample (`hop_ms`, `to_command_ms`), the run's
    duration and tasks/s, and the roles' memory (RssSampler)."""
    if tasks < 2:
        raise ValueError("--tasks must be at least 2 for a hop")
    defs = chain_definitions(tasks)
    with (
        tempfile.TemporaryDirectory(prefix="cyclonetix-bench-") as tmp,
        (Path(tmp) / "roles.log").open("a") as log,
    ):
        cluster = _cluster(defs, Path(tmp), log, agents, 1, nats_url, replicas)
        async with RssSampler(lambda: cluster_pids(cluster)) as rss:
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
    seconds = (events[-1].ts - events[0].ts).total_seconds()
    return {
        "tasks": tasks,
        "hops": len(to_started),
        "seconds": round(seconds, 3),
        "tasks_per_s": round(tasks / seconds, 1),
        "p50_ms": round(percentile(to_started, 0.5), 3),
        "p90_ms": round(percentile(to_started, 0.9), 3),
        "p99_ms": round(percentile(to_started, 0.99), 3),
        "mean_ms": round(statistics.fmean(to_started), 3),
        "to_command_p50_ms": round(percentile(to_running, 0.5), 3),
        "to_command_p90_ms": round(percentile(to_running, 0.9), 3),
        "to_command_p99_ms": round(percentile(to_running, 0.99), 3),
        "hop_ms": [round(ms, 3) for ms in to_started],
        "to_command_ms": [round(ms, 3) for ms in to_running],
        **rss.figures(),
    }


async def throughput(
    tasks: int = 5000,
    *,
    agents: int = 2,
    concurrency: int = 8,
    nats_url: str | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    """Figures, `completed_over_time` ([seconds since the run's first event, tasks succeeded
    by then]) and the roles' memory (RssSampler)."""
    defs = fanout_definitions(tasks)
    with (
        tempfile.TemporaryDirectory(prefix="cyclonetix-bench-") as tmp,
        (Path(tmp) / "roles.log").open("a") as log,
    ):
        cluster = _cluster(defs, Path(tmp), log, agents, concurrency, nats_url, replicas)
        async with RssSampler(lambda: cluster_pids(cluster)) as rss:
            await cluster.start()
            try:
                started = time.perf_counter()
                events = await _run_to_end(cluster, defs, "dag", "bench_throughput")
                wall = time.perf_counter() - started
            finally:
                await cluster.stop()
    seconds = (events[-1].ts - events[0].ts).total_seconds()
    done = [e.ts for e in events if isinstance(e, TaskSucceeded)]
    return {
        "tasks": tasks,
        "agents": agents,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "wall_seconds": round(wall, 3),
        "tasks_per_s": round(tasks / seconds, 1),
        "completed_over_time": completed_over_time(events[0].ts, done),
        **rss.figures(),
    }


async def agent_kill(
    rounds: int = 5, *, nats_url: str | None = None, replicas: int = 1
) -> dict[str, Any]:
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
        async with RssSampler(lambda: cluster_pids(cluster)) as rss:
            await cluster.start()
            try:
                assert cluster.nats_url is not None
                async with await connect(cluster.nats_url, name="cyclonetix-bench") as backplane:
                    samples = [
                        await _kill_one(cluster, backplane, defs, marks, serving)
                        for _ in range(rounds)
                    ]
            finally:
                await cluster.stop()
    return {
        "rounds": rounds,
        "p50_ms": round(statistics.median(samples), 1),
        "max_ms": round(max(samples), 1),
        "min_ms": round(min(samples), 1),
        "mean_ms": round(statistics.fmean(samples), 1),
        **rss.figures(),
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
