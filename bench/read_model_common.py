"""What the read-model benchmarks share (bench/read_model_*_bench.py): the applying, the
generated runs behind the list queries, and the timing, so their figures compare directly."""

from __future__ import annotations

import datetime as dt
import gc
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence

from core.events import (
    AnyEvent,
    QueuedTask,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TasksQueued,
    TaskStarted,
)
from core.graph import TaskNode
from core.run import RunStatus
from projections.bulk import collector_spared
from projections.protocol import Entry, ReadModel
from projections.views import RunFilter

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


async def apply(store: ReadModel, entries: Sequence[Entry], batch: int) -> float:
    """Seconds to apply `entries` in batches of `batch`, as `cyclonetix replay` applies them
    (services.projector.replay: the collector spared, projections.bulk)."""
    gc.collect()
    t = time.perf_counter()
    with collector_spared() as settle:
        for i in range(0, len(entries), batch):
            await store.apply_batch(entries[i : i + batch])
            settle()
    return time.perf_counter() - t


QUEUED = QueuedTask(task_id="a", attempt=1, queue="q")


def many_runs(n: int) -> list[Entry]:
    """`n` small runs: a tenth failed, four tenths succeeded, the rest running or scheduled."""
    rnd = random.Random(n)
    graph = (TaskNode(id="a", task_id="a", command="true"),)
    events: list[AnyEvent] = []
    for i in range(n):
        run_id = f"run-{i:06}"
        ts = T0 + dt.timedelta(seconds=i)
        events.append(
            RunScheduled(
                run_id=run_id,
                ts=ts,
                kind="dag",
                target=rnd.choice(("etl", "report", "train")),
                name=run_id,
                graph=graph,
                trigger=rnd.choice(("cli", "cron", "api")),
            )
        )
        fate = rnd.random()
        if fate < 0.8:
            events.append(TasksQueued(run_id=run_id, ts=ts, tasks=(QUEUED,)))
            events.append(TaskStarted(run_id=run_id, ts=ts, task_id="a", attempt=1, agent_id="x"))
        if fate < 0.1:
            events.append(RunFailed(run_id=run_id, ts=ts))
        elif fate < 0.5:
            events.append(RunSucceeded(run_id=run_id, ts=ts))
    return list(enumerate(events, start=1))


async def timed(call: Callable[[], Awaitable[object]], repeat: int) -> dict[str, float]:
    """p50 and p99 of `call` in milliseconds (after one warm-up call)."""
    await call()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3),
    }


async def list_figures(lists: ReadModel, entries: int, seconds: float) -> dict[str, object]:
    """The list queries every store is measured on, over the runs of `many_runs` (applied in
    `seconds`): a first page of failed runs, one 20 pages deep, by target, and the counts."""
    failed = RunFilter(status=RunStatus.FAILED)
    deep = None
    for _ in range(20):  # 20 pages in: a cursor 1,000 failed runs deep
        deep = (await lists.list_runs(failed, 50, deep)).next_cursor
    first_page = await lists.list_runs(failed, 50)
    assert len(first_page.items) == 50
    assert all(r.status == RunStatus.FAILED for r in first_page.items)
    return {
        "list_events": entries,
        "list_load_events_per_s": round(entries / seconds),
        "list_failed_50": await timed(lambda: lists.list_runs(failed, 50), 200),
        "list_failed_50_deep": await timed(lambda: lists.list_runs(failed, 50, deep), 200),
        "list_target_50": await timed(lambda: lists.list_runs(RunFilter(target="train"), 50), 200),
        "count_runs": await timed(lists.count_runs, 50),
    }
