"""The Gantt chart's arithmetic (web/pages/timeline.py), without a browser."""

from __future__ import annotations

import datetime as dt

from core.run import TaskStatus
from projections.views import AttemptRow, AttemptStatus, TaskRunRow
from web.pages import timeline

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def task(task_id: str, start: float | None, end: float | None, agent: str = "a1") -> TaskRunRow:
    return TaskRunRow(
        run_id="r",
        task_id=task_id,
        definition=task_id,
        queue="default",
        status=TaskStatus.SUCCEEDED if end is not None else TaskStatus.RUNNING,
        attempt=1,
        max_attempts=1,
        agent_id=agent,
        started_at=None if start is None else at(start),
        ended_at=None if end is None else at(end),
        last_seq=1,
    )


def test_overlapping_attempts_of_one_agent_get_rows_of_their_own() -> None:
    found, waiting = timeline.spans(
        [task("top", 0, 1), task("left", 1, 3), task("right", 1, 2), task("end", 3, 4)], []
    )
    chart = timeline.build(found, waiting, now=at(10))
    assert [lane.agent for lane in chart.lanes] == ["a1"]
    rows = [[b.span.task_id for b in row] for row in chart.lanes[0].rows]
    assert rows == [["top", "left", "end"], ["right"]]
    assert chart.seconds == 4
    assert chart.lanes[0].rows[0][1].left == 25  # left starts at 1 s of 4
    assert chart.lanes[0].rows[0][1].width == 50


def test_retried_tasks_show_every_attempt_and_unstarted_work_is_counted() -> None:
    attempts = [
        AttemptRow(
            run_id="r",
            task_id="flaky",
            attempt=n,
            status=AttemptStatus.FAILED if n == 1 else AttemptStatus.SUCCEEDED,
            queue="default",
            agent_id=agent,
            queued_at=at(0),
            started_at=at(start),
            ended_at=at(start + 1),
            last_seq=n,
        )
        for n, agent, start in ((1, "a1", 0), (2, "a2", 2))
    ]
    found, waiting = timeline.spans(
        [task("flaky", 2, 3, "a2"), task("waits", None, None), task("runs", 1, None)], attempts
    )
    chart = timeline.build(found, waiting, now=at(5))
    assert waiting == 1
    by_agent = {
        lane.agent: [b.span.attempt for row in lane.rows for b in row] for lane in chart.lanes
    }
    assert by_agent == {"a1": [1, 1], "a2": [2]}
    assert chart.seconds == 5  # a running attempt reaches to now


def test_no_attempt_started_is_an_empty_chart() -> None:
    chart = timeline.build(*timeline.spans([task("x", None, None)], []), now=T0)
    assert chart.lanes == [] and chart.waiting == 1
