"""Rules of the run state machine, one test per rule."""

from __future__ import annotations

import datetime as dt
import json

from core.definitions import DefinitionErrors
from core.errors import Invalid
from core.events import (
    EvaluationResult,
    GraphExtended,
    RunCancelled,
    RunCancelRequested,
    RunFailed,
    RunSucceeded,
    TaskCancelled,
    TaskFailed,
    TaskLost,
    TaskQueued,
    TaskRetryScheduled,
    TaskSkipped,
    msg_id,
)
from core.graph import GraphError, TaskNode
from core.run import (
    EVALUATING,
    FAILED,
    PENDING,
    QUEUED,
    RUN_RUNNING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TASK_DONE,
    UP_FOR_RETRY,
    RunStatus,
    RunSummary,
    TaskStatus,
    advance,
    dispatch_for,
    fold,
    next_wakeup,
    run_summary,
    summary,
)
from tests.unit.core.runkit import (
    DIAMOND,
    T0,
    failed,
    node,
    queued_ids,
    scheduled,
    start,
    started,
    succeeded,
)


def test_roots_are_queued_first_and_dependents_wait() -> None:
    state, events = start(*DIAMOND)
    assert queued_ids(events) == ["a"]
    assert state.tasks["b"].remaining == 1
    assert state.tasks["d"].remaining == 2


def test_success_releases_only_dependents_whose_counters_reach_zero() -> None:
    state, _ = start(*DIAMOND)
    fold(state, succeeded("run-1", "a"))
    assert sorted(queued_ids(advance(state, T0))) == ["b", "c"]
    fold(state, succeeded("run-1", "b"))
    assert queued_ids(advance(state, T0)) == []  # d still waits for c
    assert state.tasks["d"].remaining == 1
    fold(state, succeeded("run-1", "c"))
    assert queued_ids(advance(state, T0)) == ["d"]


def test_run_succeeds_once_every_task_succeeded() -> None:
    state, _ = start(*DIAMOND)
    ends = []
    for task_id in ("a", "b", "c", "d"):
        fold(state, succeeded("run-1", task_id))
        ends += [e for e in advance(state, T0) if isinstance(e, RunSucceeded)]
    assert len(ends) == 1
    assert state.status == "succeeded"
    assert advance(state, T0) == []


def test_queue_of_each_task_is_in_its_queued_event_and_dispatch() -> None:
    state, _ = start(node("prep"), node("train", "prep", queue="gpu"))
    fold(state, succeeded("run-1", "prep"))
    (q,) = [e for e in advance(state, T0) if isinstance(e, TaskQueued)]
    assert q.queue == "gpu"
    assert dispatch_for(state, q.task_id).queue == "gpu"


def test_dispatch_env_is_context_under_parameters() -> None:
    n = TaskNode(id="t", task_id="t", command="echo $A", parameters={"A": "task", "B": "task"})
    state = fold(None, scheduled(n, context={"A": "ctx", "C": "ctx"}))
    assert state is not None
    (q,) = advance(state, T0)
    assert isinstance(q, TaskQueued)
    env = dispatch_for(state, q.task_id).env
    assert {k: v for k, v in env.items() if not k.startswith("CYCLONETIX_")} == {
        "A": "task",
        "B": "task",
        "C": "ctx",
    }
    assert env["CYCLONETIX_TASK_ID"] == "t" and env["CYCLONETIX_ATTEMPT"] == "1"


def test_mid_graph_failure_skips_dependents_and_fails_the_run() -> None:
    state, _ = start(*DIAMOND)
    fold(state, failed("run-1", "a"))
    decisions = advance(state, T0)
    skipped = [e for e in decisions if isinstance(e, TaskSkipped)]
    assert sorted(e.task_id for e in skipped) == ["b", "c", "d"]
    assert all(e.reason == "upstream_failed" for e in skipped)
    ends = [e for e in decisions if isinstance(e, RunFailed)]
    assert len(ends) == 1 and ends[0].failed_tasks == ("a",)
    assert decisions[-1] == ends[0]  # the terminal event comes last
    assert state.tasks["d"].status == SKIPPED


def test_independent_branch_finishes_before_the_run_fails() -> None:
    state, _ = start(node("a"), node("b"), node("c", "a"))
    fold(state, failed("run-1", "a"))
    decisions = advance(state, T0)
    assert not any(isinstance(e, RunFailed) for e in decisions)  # b is still queued
    fold(state, succeeded("run-1", "b"))
    assert any(isinstance(e, RunFailed) for e in advance(state, T0))


def test_retry_is_scheduled_with_backoff_then_queued_after_not_before() -> None:
    state, _ = start(node("a", retries=2))
    fold(state, failed("run-1", "a", 1))
    (retry,) = advance(state, T0)
    assert isinstance(retry, TaskRetryScheduled)
    assert retry.attempt == 2 and retry.not_before == T0 + dt.timedelta(seconds=10)
    assert state.tasks["a"].status == UP_FOR_RETRY
    assert next_wakeup(state) == retry.not_before
    assert advance(state, T0 + dt.timedelta(seconds=9)) == []
    (q,) = advance(state, T0 + dt.timedelta(seconds=10))
    assert isinstance(q, TaskQueued) and q.attempt == 2
    fold(state, failed("run-1", "a", 2))
    (retry3,) = advance(state, T0)
    assert isinstance(retry3, TaskRetryScheduled)
    # backoff 2 -> 20 s, capped by max_delay_seconds=15
    assert retry3.attempt == 3 and retry3.not_before == T0 + dt.timedelta(seconds=15)
    advance(state, T0 + dt.timedelta(seconds=15))
    fold(state, failed("run-1", "a", 3))
    assert isinstance(advance(state, T0)[-1], RunFailed)
    assert state.tasks["a"].status == FAILED and state.tasks["a"].attempt == 3


def test_result_of_a_stale_attempt_is_ignored() -> None:
    state, _ = start(node("a", retries=1))
    fold(state, failed("run-1", "a", 1))
    advance(state, T0)  # retry scheduled
    advance(state, T0 + dt.timedelta(hours=1))  # attempt 2 queued
    assert state.tasks["a"].attempt == 2 and state.tasks["a"].status == QUEUED
    before = state.snapshot()
    fold(state, succeeded("run-1", "a", 1))  # late result of attempt 1
    assert state.snapshot() == before


def test_duplicate_events_change_nothing() -> None:
    state, events = start(*DIAMOND)
    (qa,) = events
    assert isinstance(qa, TaskQueued)
    for event in (qa, started(qa), succeeded("run-1", "a")):
        fold(state, event)
        before = state.snapshot()
        fold(state, event)
        assert state.snapshot() == before


def test_a_queued_decision_is_never_repeated() -> None:
    state, events = start(*DIAMOND)
    assert advance(state, T0) == []
    fold(state, events[0])  # our own decision delivered back by the log
    assert advance(state, T0) == []


def test_redelivery_to_another_agent_moves_the_task() -> None:
    state, (qa,) = start(node("a"))
    assert isinstance(qa, TaskQueued)
    fold(state, started(qa, agent="one"))
    fold(state, started(qa, agent="two", delivery=2))
    assert state.tasks["a"].agent_id == "two" and state.tasks["a"].delivery == 2
    fold(state, started(qa, agent="one"))  # an older delivery never wins back
    assert state.tasks["a"].agent_id == "two"


def test_timeout_failure_is_retried_like_any_failure() -> None:
    state, _ = start(node("a", retries=1, timeout=5))
    fold(state, TaskFailed(run_id="run-1", ts=T0, task_id="a", attempt=1, reason="timeout"))
    (retry,) = advance(state, T0)
    assert isinstance(retry, TaskRetryScheduled) and retry.previous_reason == "timeout"


def test_silent_agent_past_timeout_and_grace_fails_the_attempt() -> None:
    state, (qa,) = start(node("a", timeout=5))
    assert isinstance(qa, TaskQueued)
    fold(state, started(qa))
    assert state.tasks["a"].status == RUNNING
    deadline = next_wakeup(state)
    assert deadline is not None and deadline > T0 + dt.timedelta(seconds=5)
    assert advance(state, deadline - dt.timedelta(seconds=1)) == []
    decisions = advance(state, deadline)
    assert isinstance(decisions[0], TaskFailed) and decisions[0].reason == "timeout"
    assert isinstance(decisions[-1], RunFailed)


def test_lost_task_counts_as_a_failed_attempt() -> None:
    state, _ = start(node("a"))
    fold(state, TaskLost(run_id="run-1", ts=T0, task_id="a", attempt=1, message="gone"))
    assert state.tasks["a"].status == FAILED and state.tasks["a"].reason == "lost"


def test_cancel_skips_waiting_tasks_cancels_queued_and_ends_cancelled() -> None:
    state, (qa,) = start(*DIAMOND)
    assert isinstance(qa, TaskQueued)
    fold(state, RunCancelRequested(run_id="run-1", ts=T0, reason="user"))
    decisions = advance(state, T0)
    assert [type(e) for e in decisions] == [TaskCancelled, *[TaskSkipped] * 3, RunCancelled]
    # b and c were never ready: they are skipped once a is cancelled (it blocks them)
    assert state.tasks["b"].status == SKIPPED and state.tasks["d"].status == SKIPPED
    assert state.status == "cancelled"


def test_cancel_waits_for_running_tasks() -> None:
    state, (qa,) = start(*DIAMOND)
    assert isinstance(qa, TaskQueued)
    fold(state, started(qa))
    fold(state, RunCancelRequested(run_id="run-1", ts=T0))
    assert advance(state, T0) == []
    fold(state, succeeded("run-1", "a"))
    decisions = advance(state, T0)
    assert {type(e) for e in decisions} == {TaskSkipped, RunCancelled}


def test_evaluation_point_extends_the_graph_before_it_counts_as_done() -> None:
    state, _ = start(node("check", evaluation_point=True), node("report", "check"))
    evaluation = EvaluationResult(next_tasks=("deploy",), context_updates={"MODEL": "v2"})
    fold(state, succeeded("run-1", "check", evaluation=evaluation))
    assert state.tasks["check"].status == EVALUATING

    def extend(
        existing: dict[str, TaskNode], after: str, result: EvaluationResult
    ) -> tuple[TaskNode, ...]:
        assert "check" in existing and after == "check"
        return tuple(node(t, after) for t in result.next_tasks)

    decisions = advance(state, T0, extend)
    assert isinstance(decisions[0], GraphExtended)
    assert sorted(queued_ids(decisions)) == ["deploy", "report"]
    assert state.context["MODEL"] == "v2"
    assert state.tasks["check"].status == SUCCEEDED


def test_evaluation_asking_for_unknown_tasks_fails_the_evaluation_point() -> None:
    state, _ = start(node("check", evaluation_point=True))
    fold(state, succeeded("run-1", "check", evaluation=EvaluationResult(next_tasks=("x",))))

    def extend(
        existing: dict[str, TaskNode], after: str, result: EvaluationResult
    ) -> tuple[TaskNode, ...]:
        raise ValueError("unknown task 'x'")

    decisions = advance(state, T0, extend)
    assert isinstance(decisions[0], TaskFailed)
    assert (
        decisions[0].reason == "invalid_evaluation" and "unknown task 'x'" in decisions[0].message
    )
    assert isinstance(decisions[-1], RunFailed)


def test_finished_run_ignores_everything() -> None:
    state, _ = start(node("a"))
    fold(state, succeeded("run-1", "a"))
    advance(state, T0)
    before = state.snapshot()
    fold(state, failed("run-1", "a"))
    fold(state, RunCancelRequested(run_id="run-1", ts=T0))
    assert state.snapshot() == before and advance(state, T0) == []


def test_events_before_run_scheduled_are_ignored() -> None:
    assert fold(None, succeeded("run-1", "a")) is None


def test_message_ids_are_deterministic_and_distinct_per_fact() -> None:
    a1 = succeeded("r", "a", 1)
    assert (
        msg_id(a1)
        == msg_id(succeeded("r", "a", 1, ts=T0 + dt.timedelta(1)))
        == "r/a/1/TaskSucceeded"
    )
    assert msg_id(a1) != msg_id(succeeded("r", "a", 2))
    qa = TaskQueued(run_id="r", ts=T0, task_id="a", attempt=1, queue="q")
    assert msg_id(started(qa, delivery=1)) != msg_id(started(qa, delivery=2))


# --- statuses and the typed view ---------------------------------------------------------------


def test_statuses_are_enums_and_the_old_constants_are_their_members() -> None:
    assert PENDING is TaskStatus.PENDING and SUCCEEDED is TaskStatus.SUCCEEDED
    assert RUN_RUNNING is RunStatus.RUNNING
    assert {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.SKIPPED, "cancelled"} == TASK_DONE
    state, _ = start(node("a"))
    assert type(state.tasks["a"].status) is TaskStatus and type(state.status) is RunStatus


def test_run_summary_is_typed_and_summary_prints_the_same_json_as_before() -> None:
    state = fold(None, scheduled(*DIAMOND))
    assert state is not None
    assert run_summary(state) == RunSummary(
        run_id="run-1", status=RunStatus.SCHEDULED, tasks=dict.fromkeys("abcd", PENDING)
    )
    assert json.dumps(summary(state)) == (
        '{"run_id": "run-1", "status": "scheduled", "tasks": '
        '{"a": "pending", "b": "pending", "c": "pending", "d": "pending"}}'
    )
    advance(state, T0)
    fold(state, succeeded("run-1", "a"))
    view = summary(state)
    assert json.dumps(view) == (
        '{"run_id": "run-1", "status": "running", "tasks": '
        '{"a": "succeeded", "b": "pending", "c": "pending", "d": "pending"}}'
    )
    # Plain strings, not enum members: any JSON encoder prints the same text.
    assert type(view["status"]) is str and all(type(s) is str for s in view["tasks"].values())


def test_graph_and_definition_errors_are_invalid_input() -> None:
    assert issubclass(GraphError, Invalid) and issubclass(DefinitionErrors, Invalid)
