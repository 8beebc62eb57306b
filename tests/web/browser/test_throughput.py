"""The dashboard's per-minute throughput (web/pages/throughput.py), without a browser."""

from __future__ import annotations

import datetime as dt

from core.events import TaskFailed, TaskStarted, TaskSucceeded
from core.run import TaskStatus
from projections.views import TaskRunRow
from web.pages.throughput import WINDOW_MIN, Throughput

NOW = dt.datetime(2026, 1, 1, 12, 0, 30, tzinfo=dt.UTC)


def ago(minutes: float) -> dt.datetime:
    return NOW - dt.timedelta(minutes=minutes)


def row(task_id: str, status: TaskStatus, ended: dt.datetime | None) -> TaskRunRow:
    return TaskRunRow(
        run_id="r",
        task_id=task_id,
        definition=task_id,
        queue="default",
        status=status,
        attempt=1,
        max_attempts=1,
        ended_at=ended,
        last_seq=1,
    )


def test_live_events_and_seeded_rows_fill_the_last_hour() -> None:
    counter = Throughput(since=ago(1))
    counter.seed(
        [
            row("a", TaskStatus.SUCCEEDED, ago(3)),
            row("b", TaskStatus.FAILED, ago(3)),
            row("c", TaskStatus.SKIPPED, ago(3)),  # skipped: no attempt ended
            row("d", TaskStatus.SUCCEEDED, ago(0.5)),  # after `since`: the live feed counts it
            row("e", TaskStatus.SUCCEEDED, ago(90)),  # outside the window
        ]
    )

    def succeeded(at: dt.datetime) -> TaskSucceeded:
        return TaskSucceeded(ts=at, run_id="r", task_id="d", attempt=1, exit_code=0, duration_ms=1)

    counter.observe(1, succeeded(ago(0.5)))
    counter.observe(
        2,
        TaskFailed(
            ts=ago(0.2),
            run_id="r",
            task_id="d",
            attempt=1,
            exit_code=1,
            duration_ms=1,
            reason="exit",
        ),
    )
    counter.observe(3, TaskStarted(ts=ago(0.2), run_id="r", task_id="d", attempt=1, agent_id="x"))
    counter.observe(4, succeeded(ago(5)))  # before `since`: seeded, not counted again
    series = counter.series(NOW)
    assert len(series) == WINDOW_MIN
    assert series[-1] == 2  # this minute: the two live ends
    assert series[-4] == 2  # three minutes ago: the two seeded ends
    assert sum(series) == 4
    assert counter.series(NOW + dt.timedelta(hours=2)) == [0] * WINDOW_MIN  # all forgotten
    assert counter.minutes == {}
