"""Benchmark: replay into the in-memory read model (projections/memory.py), the store of
`cyclonetix dev` and of `replay --verify`.

Replays a generated log (default 1,010,000 events: 10,000 runs of 101 events, interleaved as in
bench/fold_bench.py, already decoded) into an empty store, in batches as `cyclonetix replay`
applies them (bench/read_model_common.py `apply`). Budget (issue 8): >= 100,000 events/s.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from bench.fold_bench import build_log
from bench.read_model_common import apply
from core.run import RunStatus
from projections.memory import MemoryReadModel
from projections.protocol import Entry
from services.projector import REPLAY_BATCH


async def run(runs: int, events_per_run: int, batch: int) -> dict[str, object]:
    log: list[Entry] = list(enumerate(build_log(runs, events_per_run), start=1))
    store = MemoryReadModel()
    seconds = await apply(store, log, batch)
    assert await store.checkpoint() == len(log)
    counts = await store.count_runs()
    assert counts[RunStatus.SUCCEEDED] == runs, counts
    return {
        "bench": "read_model_memory",
        "batch": batch,
        "replay_runs": runs,
        "replay_events": len(log),
        "replay_s": round(seconds, 2),
        "replay_events_per_s": round(len(log) / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs of the replayed log")
    parser.add_argument("--events-per-run", type=int, default=101)
    parser.add_argument(
        "--batch", type=int, default=REPLAY_BATCH, help="entries per apply_batch (replay's)"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.runs, args.events_per_run, args.batch))))


if __name__ == "__main__":
    main()
