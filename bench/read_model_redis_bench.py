"""Benchmark: the Redis read model (projections/redis.py) on a real server.

1. Replay a generated log (default 200,000 events: 2,000 runs of 100 events, interleaved as in
   bench/fold_bench.py) into an empty store, in batches as a projector applies them.
   Budget (issue 8): >= 20,000 events/s (over 1,000,000 events).
2. `list_runs(status=failed, limit=50)` over 100,000 runs (a tenth failed), first page and a
   page deep into the list; `count_runs()` beside it. Budget: < 20 ms.

Server: $CYCLONETIX_BENCH_REDIS (default redis://127.0.0.1:6379/0); the store lives under a
fresh key prefix (`cxbench:<random>:`) whose keys are deleted after the run. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from bench.fold_bench import build_log
from core.events import (
    AnyEvent,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskQueued,
    TaskStarted,
)
from core.graph import TaskNode
from core.run import RunStatus
from projections.protocol import Entry
from projections.redis import RedisReadModel
from projections.views import RunFilter

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SERVER_ENV = "CYCLONETIX_BENCH_REDIS"


async def apply(store: RedisReadModel, entries: list[Entry], batch: int) -> float:
    """Seconds to apply `entries` in batches of `batch`."""
    gc.collect()
    t = time.perf_counter()
    for i in range(0, len(entries), batch):
        await store.apply_batch(entries[i : i + batch])
    return time.perf_counter() - t


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
            events.append(TaskQueued(run_id=run_id, ts=ts, task_id="a", attempt=1, queue="q"))
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


async def run(
    server: str, replay_runs: int, events_per_run: int, batch: int, list_runs: int
) -> dict[str, object]:
    prefix = f"cxbench:{uuid.uuid4().hex[:12]}:"
    out: dict[str, object] = {"bench": "read_model_redis", "batch": batch}
    replay = RedisReadModel(server, prefix=f"{prefix}replay:")
    try:
        log: list[Entry] = list(enumerate(build_log(replay_runs, events_per_run), start=1))
        seconds = await apply(replay, log, batch)
        assert await replay.checkpoint() == len(log)
        counts = await replay.count_runs()
        assert counts[RunStatus.SUCCEEDED] == replay_runs, counts
        out |= {
            "replay_runs": replay_runs,
            "replay_events": len(log),
            "replay_s": round(seconds, 2),
            "replay_events_per_s": round(len(log) / seconds),
        }
    finally:
        await replay.reset()
        await replay.close()

    lists = RedisReadModel(server, prefix=f"{prefix}lists:")
    try:
        entries = many_runs(list_runs)
        seconds = await apply(lists, entries, batch)
        failed = RunFilter(status=RunStatus.FAILED)
        deep = None
        for _ in range(20):  # 20 pages in: a cursor 1,000 failed runs deep
            deep = (await lists.list_runs(failed, 50, deep)).next_cursor
        first_page = await lists.list_runs(failed, 50)
        assert len(first_page.items) == 50
        assert all(r.status == RunStatus.FAILED for r in first_page.items)
        out |= {
            "list_runs": list_runs,
            "list_events": len(entries),
            "list_load_events_per_s": round(len(entries) / seconds),
            "list_failed_50": await timed(lambda: lists.list_runs(failed, 50), 200),
            "list_failed_50_deep": await timed(lambda: lists.list_runs(failed, 50, deep), 200),
            "list_target_50": await timed(
                lambda: lists.list_runs(RunFilter(target="train"), 50), 200
            ),
            "list_failed_train_50": await timed(
                lambda: lists.list_runs(RunFilter(status=RunStatus.FAILED, target="train"), 50),
                200,
            ),
            "count_runs": await timed(lists.count_runs, 50),
            "count_runs_target": await timed(
                lambda: lists.count_runs(RunFilter(target="train")), 50
            ),
        }
    finally:
        await lists.reset()
        await lists.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2_000, help="runs of the replayed log")
    parser.add_argument("--events-per-run", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1_000, help="entries per apply_batch")
    parser.add_argument("--list-runs", type=int, default=100_000, help="runs under list_runs")
    args = parser.parse_args()
    server = os.environ.get(SERVER_ENV, "redis://127.0.0.1:6379/0")
    result = asyncio.run(run(server, args.runs, args.events_per_run, args.batch, args.list_runs))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
