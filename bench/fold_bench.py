"""Benchmark: fold a large event log (many runs, interleaved) into run states.

Budget (issue 2): 1,000,000 events of 10,000 runs in under 10 s in one process.

The log is what the orchestrator writes: a TasksQueued per decision. `--per-task` folds a log of
older orchestrators instead (one TaskQueued per attempt), which the log may still hold.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import time

import msgspec

from core.events import (
    AnyEvent,
    RunScheduled,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    decode,
    each_queued,
    encode,
)
from core.graph import TaskNode
from core.run import advance, fold, replay

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _template_run(tasks: int, *, per_task: bool = False) -> list[AnyEvent]:
    """One run's full history: every task queued, started and succeeded. Each task waits for
    the two before it, so each decision queues one task (a TasksQueued of one attempt; with
    `per_task`, its TaskQueued, as older orchestrators logged it)."""
    nodes = tuple(
        TaskNode(
            id=f"t{i}",
            task_id=f"t{i}",
            command="true",
            dependencies=tuple(f"t{j}" for j in (i - 1, i - 2) if j >= 0),
        )
        for i in range(tasks)
    )
    scheduled = RunScheduled(
        run_id="template", ts=T0, kind="dag", target="bench", name="bench", graph=nodes
    )
    state = fold(None, scheduled)
    assert state is not None
    log: list[AnyEvent] = [scheduled]
    while not state.finished:
        decisions = advance(state, T0)
        for decision in decisions:
            if per_task and isinstance(decision, TasksQueued):
                log.extend(each_queued(decision))
            else:
                log.append(decision)
        for q in (q for decision in decisions for q in each_queued(decision)):
            for event in (
                TaskStarted(run_id="template", ts=T0, task_id=q.task_id, attempt=1, agent_id="a"),
                TaskSucceeded(run_id="template", ts=T0, task_id=q.task_id, attempt=1),
            ):
                fold(state, event)
                log.append(event)
    return log


def build_log(runs: int, events_per_run: int, *, per_task: bool = False) -> list[AnyEvent]:
    # 3 events a task + scheduled + ended
    tasks = max(1, (events_per_run - 1) // 3)
    template = _template_run(tasks, per_task=per_task)
    per_run = [
        [msgspec.structs.replace(e, run_id=f"run-{r}") for e in template] for r in range(runs)
    ]
    # Interleave runs in small slices, as concurrent runs appear in a real stream.
    log: list[AnyEvent] = []
    width = len(template)
    for start in range(0, width, 4):
        for events in per_run:
            log.extend(events[start : start + 4])
    return log


def run(
    runs: int = 10_000, events_per_run: int = 100, *, per_task: bool = False
) -> dict[str, float]:
    log = build_log(runs, events_per_run, per_task=per_task)
    gc.collect()
    t = time.perf_counter()
    states = replay(log)
    fold_s = time.perf_counter() - t
    assert len(states) == runs and all(s.status == "succeeded" for s in states.values())
    sample = log[: min(len(log), 100_000)]
    blobs = [encode(e) for e in sample]
    t = time.perf_counter()
    for blob in blobs:
        decode(blob)
    decode_s = (time.perf_counter() - t) * len(log) / len(sample)
    return {
        "runs": runs,
        "events": len(log),
        "fold_s": round(fold_s, 3),
        "fold_events_per_s": round(len(log) / fold_s),
        "decode_s_estimated": round(decode_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs in the log (10,000)")
    parser.add_argument("--events-per-run", type=int, default=100, help="about (100)")
    parser.add_argument(
        "--per-task", action="store_true", help="a log of TaskQueued events (older orchestrators)"
    )
    args = parser.parse_args()
    if args.runs < 1 or args.events_per_run < 4:
        parser.error("--runs must be at least 1 and --events-per-run at least 4")
    print(json.dumps(run(args.runs, args.events_per_run, per_task=args.per_task)))


if __name__ == "__main__":
    main()
