"""A start that lands after its attempt was cancelled (core.run: RunState.late_starts).

An agent judges a dispatch by its run's newest event, which the orchestrator's other
cancellations or other tasks' results can hide: its start may land after the orchestrator
cancelled that queued attempt. Its command then runs, so the cancelled run must not end before
it reports (or LATE_START_GRACE has passed: a report can be lost), and the end of a cancelled
run is appended conditionally, so no start can slip in just before it.
"""

from __future__ import annotations

import datetime as dt

from core.events import (
    RunCancelled,
    RunCancelRequested,
    TaskCancelled,
    TaskQueued,
    msg_id,
)
from core.run import LATE_START_GRACE, RunState, advance, decide, fold, is_racing, next_wakeup
from tests.unit.core import runkit
from tests.unit.core.runkit import T0, node, start, started, succeeded


def cancelled_with_both_queued() -> tuple[RunState, dict[str, TaskQueued]]:
    """Two independent tasks queued, the run's cancellation, and both queued attempts cancelled
    by the orchestrator."""
    state, decided = start(node("a"), node("b"))
    queued = {q.task_id: q for q in runkit.queued(decided)}
    fold(state, RunCancelRequested(run_id="run-1", ts=T0))
    cancels = decide(state, T0, racing=True)
    assert {type(e) for e in cancels} == {TaskCancelled}
    for event in cancels:
        fold(state, event)
    return state, queued


def test_the_end_of_a_cancelled_run_is_a_racing_decision() -> None:
    state, _ = cancelled_with_both_queued()
    assert advance(state, T0, racing=False) == []  # never appended unconditionally
    [end] = decide(state, T0, racing=True)
    assert isinstance(end, RunCancelled) and is_racing(end)


def test_a_late_start_keeps_the_cancelled_run_open_until_it_reports() -> None:
    state, queued = cancelled_with_both_queued()
    fold(state, started(queued["b"]))  # landed after the orchestrator's TaskCancelled of b
    assert state.late_starts == {"b": T0 + LATE_START_GRACE}
    assert decide(state, T0, racing=True) == []
    assert next_wakeup(state) == T0 + LATE_START_GRACE
    fold(state, succeeded("run-1", "b"))  # its report (killed or finished)
    assert state.late_starts == {}
    [end] = decide(state, T0, racing=True)
    assert isinstance(end, RunCancelled)
    assert state.tasks["b"].status == "cancelled"  # the orchestrator's verdict stands


def test_a_late_start_whose_report_is_lost_ends_the_wait_after_the_grace() -> None:
    state, queued = cancelled_with_both_queued()
    fold(state, started(queued["a"]))
    just_before = T0 + LATE_START_GRACE - dt.timedelta(milliseconds=1)
    assert decide(state, just_before, racing=True) == []
    [end] = decide(state, T0 + LATE_START_GRACE, racing=True)
    assert isinstance(end, RunCancelled)


def test_an_agents_cancel_report_is_not_deduplicated_against_the_orchestrators() -> None:
    ours = TaskCancelled(run_id="r", ts=T0, task_id="a", attempt=1)
    theirs = TaskCancelled(run_id="r", ts=T0, task_id="a", attempt=1, agent_id="agent-1")
    assert msg_id(ours) != msg_id(theirs)
    assert msg_id(theirs) == msg_id(theirs.__replace__(ts=T0 + dt.timedelta(seconds=1)))
