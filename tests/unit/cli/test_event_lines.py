"""How `cyclonetix events` and `schedule --wait`'s progress show a run's events, one line each."""

from __future__ import annotations

import datetime as dt

from core.events import QueuedTask, TasksQueued, TaskStarted, each_queued
from core.run import fold
from services.cli.events import line
from services.cli.schedule import progress_line
from tests.unit.core.runkit import node, scheduled

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
QUEUED = TasksQueued(
    run_id="run-1",
    ts=T0,
    tasks=(
        QueuedTask(task_id="extract", attempt=1, queue="default"),
        QueuedTask(task_id="train", attempt=2, queue="gpu"),
    ),
)


def test_a_tasks_queued_line_names_each_attempt_and_its_queue() -> None:
    shown = line(7, QUEUED, as_json=False)
    assert "TasksQueued" in shown and "2 tasks" in shown
    assert "queued=extract#1@default train#2@gpu" in shown
    started = TaskStarted(run_id="run-1", ts=T0, task_id="train", attempt=2, agent_id="a1")
    assert "train#2" in line(8, started, as_json=False)


def test_progress_shows_a_line_per_attempt_queued() -> None:
    state = fold(None, scheduled(node("extract"), node("train")))
    assert state is not None
    lines = [progress_line(state, q) for q in each_queued(QUEUED)]
    assert lines[0] is not None and "extract" in lines[0] and "queued on default" in lines[0]
    assert lines[1] is not None and "train" in lines[1] and "(attempt 2)" in lines[1]
