"""Benchmark of the live projector's lag under the throughput workload (`cyclonetix bench
projector-lag`); budget (issue 8): p99 < 50 ms.

The workload is `bench throughput`'s: M independent `true` tasks in one DAG run, K agents, all
real processes on a private NATS. The projector is `services.projector.Projector`, the code of
the `projector` role, run in the benchmark's own process (which does nothing else meanwhile but
schedule the run) into the store of `--read-model` (memory by default; Redis under a fresh key
prefix, Postgres in a fresh schema: both removed after), following the same `CX_EVENTS` live.
It runs there so that the moment each event is applied can be taken without any IPC.

Lag of an event = the moment the store's `apply_batch` holding it returned (the write
committed, checkpoint included) minus the event's own `ts`. JetStream's stored timestamp is not
used: only services/nats reads message metadata, and the EventLog port does not give it. So the
figures rest on what each writer puts in `ts`:
- `p50_ms` … `max_ms`: the task results (TaskSucceeded/TaskFailed), whose `ts` the agent takes
  just before it appends them (`append_nowait`, services/agent.py): the append to JetStream, the
  delivery to the projector, its batching and the store write. This is the projector's lag.
- `all_*`: every event of the run, which adds for some of them what the writer did between
  taking `ts` and appending: an agent takes TaskStarted's `ts` when it begins handling a
  dispatch, then reads the run's newest event and appends conditionally (retried on a conflict,
  and 16 agents' slots contend on the one run); the orchestrator gives every event of one
  decision the same `ts` (the run's start queues all M tasks in M / QUEUED_PER_EVENT
  TasksQueued events appended one after another after it). Those figures are the staleness of
  the read model against the moment things happened, not the projector's lag alone.
- `steady_p99_ms`: the results stamped `BURST_S` or more after the run's first event. The run
  starts with a burst (RunScheduled of M nodes, then TasksQueued of all M) that a store writes at
  its replay rate; results that come meanwhile wait behind it. This figure is the lag once that
  burst is written; `p99_ms` keeps them.
Wall clocks of one machine: no skew between processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from core.errors import Unavailable
from core.events import TERMINAL, RunSucceeded, TaskFailed, TaskSucceeded
from projections.protocol import Entry, ReadModel
from projections.stores import open_read_model
from services.bench import (
    RssSampler,
    _cluster,
    _new_run,
    cluster_pids,
    fanout_definitions,
    percentile,
)
from services.nats import connect
from services.projector import Projector

TIMEOUT_S = 600.0
BURST_S = 1.0  # results stamped this long after the run's first event count as the start


class _Timed:
    """A read model whose `apply_batch` notes, per event of `run_id`, how long after its `ts`
    it was applied; everything else goes to the store it wraps."""

    def __init__(self, store: ReadModel) -> None:
        self.store = store
        self.run_id: str | None = None
        self.lags_ms: list[float] = []  # every event of the run
        self.result_lags_ms: list[float] = []  # TaskSucceeded/TaskFailed: stamped at append
        self.result_ts: list[dt.datetime] = []  # their `ts`, in the same order
        self.first_ts: dt.datetime | None = None
        self.last_applied: dt.datetime | None = None
        self.ended: RunSucceeded | None = None
        self.done = asyncio.Event()

    async def apply_batch(self, entries: Sequence[Entry]) -> int:
        applied = await self.store.apply_batch(entries)
        now = dt.datetime.now(dt.UTC)
        for _seq, event in entries:
            if event is None or event.run_id != self.run_id:
                continue
            if self.first_ts is None:
                self.first_ts = event.ts
            self.last_applied = now
            lag = (now - event.ts).total_seconds() * 1000
            self.lags_ms.append(lag)
            if isinstance(event, TaskSucceeded | TaskFailed):
                self.result_lags_ms.append(lag)
                self.result_ts.append(event.ts)
            if isinstance(event, TERMINAL):
                self.ended = event if isinstance(event, RunSucceeded) else None
                self.done.set()
        return applied

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def _private(url: str) -> tuple[str, str | None]:
    """`url` made private to this run: Redis under a fresh key prefix, Postgres in a fresh
    schema (returned, to drop); memory stays as it is."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)
    tag = f"cxbench_{uuid.uuid4().hex[:12]}"
    if scheme in ("redis", "rediss", "unix"):
        query = [q for q in query if q[0] != "prefix"] + [("prefix", f"{tag}:")]
        return urlunsplit(parts._replace(query=urlencode(query))), None
    if scheme in ("postgresql", "postgres"):
        query = [q for q in query if q[0] != "schema"] + [("schema", tag)]
        return urlunsplit(parts._replace(query=urlencode(query))), tag
    return url, None


async def _drop_schema(url: str, schema: str) -> None:
    import asyncpg  # type: ignore[import-untyped]  # (only for a Postgres store)

    parts = urlsplit(url)
    query = [q for q in parse_qsl(parts.query, keep_blank_values=True) if q[0] != "schema"]
    con = await asyncpg.connect(urlunsplit(parts._replace(query=urlencode(query))))
    try:
        await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await con.close()


async def projector_lag(
    tasks: int = 5000,
    *,
    agents: int = 2,
    concurrency: int = 8,
    read_model: str = "memory://",
    nats_url: str | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    if tasks < 1 or agents < 1:
        raise ValueError("--tasks and --agents must be at least 1")
    url, schema = _private(read_model)
    store = _Timed(open_read_model(url))
    defs = fanout_definitions(tasks)
    try:
        try:  # (the projector would wait for a store it cannot reach: fail at once instead)
            await store.store.checkpoint()
        except Unavailable as exc:
            raise RuntimeError(f"read model unavailable: {exc}") from None
        with (
            tempfile.TemporaryDirectory(prefix="cyclonetix-bench-") as tmp,
            (Path(tmp) / "roles.log").open("a") as log,
        ):
            cluster = _cluster(defs, Path(tmp), log, agents, concurrency, nats_url, replicas)
            async with RssSampler(lambda: cluster_pids(cluster)) as rss:
                await cluster.start()
                try:
                    assert cluster.nats_url is not None
                    connecting = connect(cluster.nats_url, name="cyclonetix-bench")
                    async with await connecting as backplane:
                        projector = Projector(backplane.events, cast("ReadModel", store))
                        stop = asyncio.Event()
                        projecting = asyncio.ensure_future(projector.run(stop))
                        try:
                            async with asyncio.timeout(TIMEOUT_S):
                                # (a given server's older events are applied first, not timed)
                                await projector.live.wait()
                                run = _new_run(defs, "dag", "bench_throughput")
                                store.run_id = run.run_id
                                started = time.perf_counter()
                                await backplane.events.schedule_run(run)
                                await store.done.wait()
                                wall = time.perf_counter() - started
                        finally:
                            stop.set()
                            await projecting
                finally:
                    await cluster.stop()
    finally:
        with contextlib.suppress(Exception):
            if schema is None and urlsplit(url).scheme.lower() != "memory":
                await store.store.reset()  # (the fresh Redis prefix's keys)
        await store.store.close()
        if schema is not None:
            await _drop_schema(url, schema)
    if store.ended is None:
        raise RuntimeError("benchmark run did not succeed")
    lags, results = store.lags_ms, store.result_lags_ms
    assert store.first_ts is not None and store.last_applied is not None and results
    seconds = (store.last_applied - store.first_ts).total_seconds()
    # After the start: the run's TasksQueued of M tasks (and the RunScheduled of M nodes) come
    # as one burst that every early result waits behind; results stamped later show the steady
    # lag.
    settled = store.first_ts + dt.timedelta(seconds=BURST_S)
    steady = [lag for lag, ts in zip(results, store.result_ts, strict=True) if ts >= settled]
    return {
        "tasks": tasks,
        "agents": agents,
        "concurrency": concurrency,
        "read_model": urlsplit(read_model).scheme,
        "events": len(lags),
        "batches": projector.batches,
        "seconds": round(seconds, 3),
        "wall_seconds": round(wall, 3),
        "events_per_s": round(len(lags) / seconds, 1),
        "timed_events": len(results),
        "p50_ms": round(percentile(results, 0.5), 3),
        "p90_ms": round(percentile(results, 0.9), 3),
        "p99_ms": round(percentile(results, 0.99), 3),
        "max_ms": round(max(results), 3),
        "steady_timed_events": len(steady),
        "steady_p99_ms": round(percentile(steady, 0.99), 3) if steady else None,
        "all_p50_ms": round(percentile(lags, 0.5), 3),
        "all_p99_ms": round(percentile(lags, 0.99), 3),
        "all_max_ms": round(max(lags), 3),
        **rss.figures(),  # (the projector is this process: `bench`)
    }
