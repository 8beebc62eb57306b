"""Whether a dispatched attempt may still start, from its run's newest event (core.attempts)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.attempts import held_elsewhere, why_not_current
from core.events import (
    AnyEvent,
    Dispatch,
    QueuedTask,
    RunCancelled,
    RunCancelRequested,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskCancelled,
    TaskFailed,
    TaskLost,
    TaskQueued,
    TaskRetryScheduled,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
)

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
D = Dispatch(run_id="r", task_id="t", attempt=2, queue="default", command="true")


R: Any = {"run_id": "r", "ts": NOW}  # (the fields every event has)


def queued(*attempts: tuple[str, int]) -> TasksQueued:
    tasks = tuple(QueuedTask(task_id=t, attempt=n, queue="default") for t, n in attempts)
    return TasksQueued(**R, tasks=tasks)


@pytest.mark.parametrize(
    "last",
    [
        None,  # nothing known
        RunScheduled(run_id="r", ts=NOW, kind="dag", target="d", name="d", graph=()),
        TaskQueued(**R, task_id="t", attempt=2, queue="default"),  # the usual case
        TaskStarted(**R, task_id="t", attempt=2, agent_id="a"),  # a redelivery
        TaskSucceeded(**R, task_id="other", attempt=2),  # another task's news
        TaskQueued(**R, task_id="other", attempt=5, queue="default"),
        TaskFailed(**R, task_id="t", attempt=1),  # the attempt before this one
        queued(("other", 4), ("t", 2)),  # this attempt queued with others
        queued(("other", 3)),
    ],
)
def test_current(last: AnyEvent | None) -> None:
    assert why_not_current(D, last) is None


@pytest.mark.parametrize(
    ("last", "reason"),
    [
        (RunCancelled(run_id="r", ts=NOW), "its run has ended (RunCancelled)"),
        (RunSucceeded(run_id="r", ts=NOW), "its run has ended (RunSucceeded)"),
        (RunFailed(run_id="r", ts=NOW), "its run has ended (RunFailed)"),
        (RunCancelRequested(run_id="r", ts=NOW), "its run is being cancelled"),
        (TaskCancelled(**R, task_id="t", attempt=2), "attempt 2 has already ended (TaskCancelled)"),
        (TaskSucceeded(**R, task_id="t", attempt=2), "attempt 2 has already ended (TaskSucceeded)"),
        (TaskFailed(**R, task_id="t", attempt=2), "attempt 2 has already ended (TaskFailed)"),
        (TaskLost(**R, task_id="t", attempt=2), "attempt 2 has already ended (TaskLost)"),
        (
            TaskRetryScheduled(**R, task_id="t", attempt=3, not_before=NOW),
            "superseded by attempt 3",
        ),
        (TaskQueued(**R, task_id="t", attempt=3, queue="default"), "superseded by attempt 3"),
        (queued(("t", 3)), "superseded by attempt 3"),
        (queued(("a", 1), ("t", 3), ("b", 1)), "superseded by attempt 3"),
    ],
)
def test_not_current(last: AnyEvent, reason: str) -> None:
    why = why_not_current(D, last)
    assert why is not None and reason in why


@given(
    delivery=st.integers(1, 10),
    theirs=st.integers(1, 10),
    agent=st.sampled_from(["me", "other"]),
    task=st.sampled_from(["t", "u"]),
    attempt=st.integers(1, 3),
)
def test_held_elsewhere_exactly_when_another_agent_started_this_or_a_later_delivery(
    delivery: int, theirs: int, agent: str, task: str, attempt: int
) -> None:
    last = TaskStarted(**R, task_id=task, attempt=attempt, agent_id=agent, delivery=theirs)
    held = held_elsewhere(D, delivery, "me", last) is not None
    assert held == (agent == "other" and (task, attempt) == ("t", D.attempt) and theirs >= delivery)


@pytest.mark.parametrize(
    "last",
    [
        None,
        TaskQueued(**R, task_id="t", attempt=2, queue="default"),
        TaskSucceeded(**R, task_id="t", attempt=2, agent_id="other"),
    ],
)
def test_only_a_start_says_a_delivery_is_held(last: AnyEvent | None) -> None:
    assert held_elsewhere(D, 1, "me", last) is None
