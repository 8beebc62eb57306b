"""Benchmark: the Postgres read model (projections/postgres.py) on a real server.

1. Replay a generated log (default 200,000 events: 2,000 runs of 100 events, interleaved as in
   bench/fold_bench.py) into an empty store, in batches as `cyclonetix replay` applies them.
   Budget (issue 8): >= 20,000 events/s (over 1,000,000 events).
2. `list_runs(status=failed, limit=50)` over 100,000 runs (a tenth failed), first page and a
   page deep into the list; `count_runs()` beside it. Budget: < 20 ms.

Server: $CYCLONETIX_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432); a fresh
database is created for the run and dropped after it. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid

import asyncpg  # type: ignore[import-untyped]

from bench.fold_bench import build_log
from bench.read_model_common import apply, list_figures, many_runs
from core.run import RunStatus
from projections.postgres import PostgresReadModel
from projections.protocol import Entry
from services.projector import REPLAY_BATCH

SERVER_ENV = "CYCLONETIX_BENCH_POSTGRES"


async def _admin(server: str, sql: str) -> None:
    con = await asyncpg.connect(f"{server}/postgres")
    try:
        await con.execute(sql)
    finally:
        await con.close()


async def run(
    server: str, replay_runs: int, events_per_run: int, batch: int, list_runs: int
) -> dict[str, object]:
    name = f"cyclonetix_bench_{uuid.uuid4().hex[:12]}"
    await _admin(server, f"CREATE DATABASE {name}")
    out: dict[str, object] = {"bench": "read_model_postgres", "batch": batch}
    try:
        dsn = f"{server}/{name}"
        replay = PostgresReadModel(dsn, schema="replay")
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
            await replay.close()

        lists = PostgresReadModel(dsn, schema="lists")
        try:
            entries = many_runs(list_runs)
            seconds = await apply(lists, entries, batch)
            con = await asyncpg.connect(dsn)
            try:
                await con.execute("ANALYZE lists.runs")
            finally:
                await con.close()
            out |= {"list_runs": list_runs} | await list_figures(lists, len(entries), seconds)
        finally:
            await lists.close()
    finally:
        await _admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2_000, help="runs of the replayed log")
    parser.add_argument("--events-per-run", type=int, default=100)
    parser.add_argument(
        "--batch", type=int, default=REPLAY_BATCH, help="entries per apply_batch (replay's)"
    )
    parser.add_argument("--list-runs", type=int, default=100_000, help="runs under list_runs")
    args = parser.parse_args()
    server = os.environ.get(SERVER_ENV, "postgresql://postgres@127.0.0.1:5432").rstrip("/")
    result = asyncio.run(run(server, args.runs, args.events_per_run, args.batch, args.list_runs))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
