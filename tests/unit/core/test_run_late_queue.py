"""A TaskQueued whose append had to be retried can land after the agent's events for that
attempt. The live orchestrator folded it first; a replay of the log must reach the same state,
not see the attempt queued forever."""

from __future__ import annotations

import datetime as dt

from core.events import (
    AnyEvent,
    RunSucceeded,
    TaskQueued,
    TaskRetryScheduled,
    TaskStarted,
)
from core.run import PENDING, QUEUED, SUCCEEDED, advance, fold, replay
from tests.unit.core.runkit import T0, failed, node, queued_ids, scheduled, succeeded


def started(task_id: str, attempt: int = 1) -> TaskStarted:
    return TaskStarted(run_id="run-1", ts=T0, task_id=task_id, attempt=attempt, agent_id="x")


def queued(task_id: str, attempt: int = 1) -> TaskQueued:
    return TaskQueued(run_id="run-1", ts=T0, task_id=task_id, attempt=attempt, queue="default")


def statuses(log: list[AnyEvent]) -> dict[str, str]:
    return {t: r.status for t, r in replay(log)["run-1"].tasks.items()}


def test_results_stored_before_their_task_queued_count() -> None:
    first = scheduled(node("a"), node("b", "a"))
    live: list[AnyEvent] = [first, queued("a"), started("a"), succeeded("run-1", "a")]
    stored: list[AnyEvent] = [first, started("a"), succeeded("run-1", "a"), queued("a")]
    assert statuses(stored) == statuses(live) == {"a": SUCCEEDED, "b": PENDING}
    state = replay(stored)["run-1"]
    assert queued_ids(advance(state, T0)) == ["b"]  # the run goes on after a restart


def test_a_retry_attempts_results_stored_before_its_task_queued_count() -> None:
    later = T0 + dt.timedelta(seconds=10)
    first = scheduled(node("a", retries=1))
    retry = TaskRetryScheduled(run_id="run-1", ts=T0, task_id="a", attempt=2, not_before=later)
    log: list[AnyEvent] = [first, queued("a"), started("a"), failed("run-1", "a"), retry]
    log += [started("a", 2), succeeded("run-1", "a", 2), queued("a", 2)]
    state = replay(log)["run-1"]
    assert state.tasks["a"].status == SUCCEEDED and state.tasks["a"].attempt == 2
    assert isinstance(advance(state, later)[-1], RunSucceeded)


def test_a_result_for_a_task_that_is_not_ready_is_still_ignored() -> None:
    state = fold(None, scheduled(node("a"), node("b", "a")))
    assert state is not None
    for event in (started("b"), succeeded("run-1", "b")):
        fold(state, event)
    assert state.tasks["b"].status == PENDING and state.tasks["b"].attempt == 0
    fold(state, queued("a"))
    fold(state, started("a", 2))  # an attempt that was never decided
    assert state.tasks["a"].status == QUEUED and state.tasks["a"].attempt == 1
