"""Rules of the run state machine, one test per rule."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from core.definitions import DefinitionErrors
from core.errors import Invalid
from core.events import (
    AnyEvent,
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
    TaskStarted,
    TaskSucceeded,
    msg_id,
)
from core.graph import NO_OVERRIDES, GraphError, Overrides, TaskNode
from core.run import (
    EVALUATING,
    FAILED,
    PENDING,
    RUN_RUNNING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TASK_DONE,
    UP_FOR_RETRY,
    RunState,
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
from core.snapshots import RetrySpec
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


def stale_result(kind: str, attempt: int) -> AnyEvent:
    """A result of `kind` for attempt `attempt` of task `a`, as a late agent would send it."""
    r, a = "run-1", "a"
    if kind == "TaskStarted":
        return TaskStarted(run_id=r, ts=T0, task_id=a, attempt=attempt, agent_id="x", delivery=7)
    if kind == "TaskSucceeded":
        return TaskSucceeded(run_id=r, ts=T0, task_id=a, attempt=attempt, agent_id="late")
    if kind == "TaskFailed":
        return TaskFailed(run_id=r, ts=T0, task_id=a, attempt=attempt, exit_code=1)
    if kind == "TaskLost":
        return TaskLost(run_id=r, ts=T0, task_id=a, attempt=attempt, message="late")
    assert kind == "TaskCancelled"
    return TaskCancelled(run_id=r, ts=T0, task_id=a, attempt=attempt, agent_id="late")


def at_attempt_2(where: str) -> RunState:
    """Task `a` (3 attempts allowed) whose attempt 1 failed; attempt 2 is `where`."""
    state, _ = start(node("a", "x", retries=2), node("x"), node("b", "a"))
    fold(state, succeeded("run-1", "x"))
    advance(state, T0)
    fold(state, failed("run-1", "a", 1))
    advance(state, T0)  # retry scheduled
    advance(state, T0 + dt.timedelta(hours=1))  # attempt 2 queued
    if where in ("running", "failed"):
        q = TaskQueued(run_id="run-1", ts=T0, task_id="a", attempt=2, queue="default")
        fold(state, started(q))
    if where == "failed":  # and attempt 3 is waiting for its backoff
        fold(state, failed("run-1", "a", 2))
        advance(state, T0 + dt.timedelta(hours=1))
        assert state.tasks["a"].status == UP_FOR_RETRY and state.tasks["a"].attempt == 3
    return state


STALE_KINDS = ["TaskStarted", "TaskSucceeded", "TaskFailed", "TaskLost", "TaskCancelled"]


@pytest.mark.parametrize("kind", STALE_KINDS)
@pytest.mark.parametrize("where", ["queued", "running", "failed"])
def test_a_stale_result_of_any_kind_changes_nothing(kind: str, where: str) -> None:
    state = at_attempt_2(where)
    before = state.snapshot()
    for attempt in range(1, state.tasks["a"].attempt):
        fold(state, stale_result(kind, attempt))
        assert state.snapshot() == before, (kind, attempt)
    assert advance(state, T0) == []


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
        existing: dict[str, TaskNode],
        after: str,
        result: EvaluationResult,
        overrides: Overrides = NO_OVERRIDES,
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
        existing: dict[str, TaskNode],
        after: str,
        result: EvaluationResult,
        overrides: Overrides = NO_OVERRIDES,
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


# --- backoff -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "delays"),
    [
        # factor 3: 1, 3, 9, 27 then the cap (linear growth would give 1, 2, 3 or 3, 6, 9)
        (RetrySpec(delay_seconds=1, backoff=3, max_delay_seconds=50), [0, 1, 3, 9, 27, 50, 50]),
        # factor 1.5: fractional growth, capped at 10
        (RetrySpec(delay_seconds=2, backoff=1.5, max_delay_seconds=10), [0, 2, 3, 4.5, 6.75, 10]),
        # factor 1: a constant delay
        (RetrySpec(delay_seconds=4, backoff=1, max_delay_seconds=300), [0, 4, 4, 4, 4]),
    ],
)
def test_each_retry_waits_the_previous_delay_times_the_factor_up_to_the_cap(
    spec: RetrySpec, delays: list[float]
) -> None:
    assert [spec.delay_before(attempt) for attempt in range(1, len(delays) + 1)] == delays


def test_the_state_machine_waits_the_whole_backoff_sequence() -> None:
    retries = RetrySpec(count=5, delay_seconds=1, backoff=3, max_delay_seconds=20)
    state, _ = start(TaskNode(id="a", task_id="a", command="x", retries=retries))
    now, waits = T0, []
    for attempt in range(1, 6):
        fold(state, failed("run-1", "a", attempt, ts=now))
        (retry,) = advance(state, now)
        assert isinstance(retry, TaskRetryScheduled) and retry.attempt == attempt + 1
        waits.append((retry.not_before - now).total_seconds())
        assert advance(state, retry.not_before - dt.timedelta(milliseconds=1)) == []
        now = retry.not_before
        (queued,) = advance(state, now)
        assert isinstance(queued, TaskQueued) and queued.attempt == attempt + 1
    assert waits == [1, 3, 9, 20, 20]


# --- cancel and retries --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["failed", "lost"])
def test_a_failure_after_a_cancel_request_is_never_retried(how: str) -> None:
    state, (qa,) = start(node("a", retries=3), node("b", "a"))
    assert isinstance(qa, TaskQueued)
    fold(state, started(qa))
    fold(state, RunCancelRequested(run_id="run-1", ts=T0))
    assert advance(state, T0) == []  # a runs: the agent is killing it
    result = (
        failed("run-1", "a", 1)
        if how == "failed"
        else TaskLost(run_id="run-1", ts=T0, task_id="a", attempt=1)
    )
    fold(state, result)
    assert state.tasks["a"].status == FAILED
    decisions = advance(state, T0 + dt.timedelta(hours=1))
    assert [type(e) for e in decisions] == [TaskSkipped, RunCancelled]
    assert state.tasks["a"].attempt == 1


def test_a_retry_decided_around_a_cancel_request_is_cancelled_before_it_is_queued() -> None:
    state, _ = start(node("a", retries=3))
    fold(state, failed("run-1", "a", 1))  # attempt 1 failed before the cancel
    fold(state, RunCancelRequested(run_id="run-1", ts=T0))
    decisions = advance(state, T0 + dt.timedelta(hours=1))
    assert not any(isinstance(e, TaskQueued) for e in decisions)
    assert isinstance(decisions[-1], RunCancelled)
    assert state.tasks["a"].status == "cancelled"


# --- invalid evaluations -------------------------------------------------------------------------


def refuse(
    existing: dict[str, TaskNode],
    after: str,
    result: EvaluationResult,
    overrides: Overrides = NO_OVERRIDES,
) -> tuple[TaskNode, ...]:
    raise ValueError("unknown task 'ghost'")


def test_an_invalid_evaluation_is_not_retried_even_with_retries_left() -> None:
    """Policy: the same command would ask the same question; see core.run's docstring."""
    state, _ = start(node("check", retries=3, evaluation_point=True), node("report", "check"))
    evaluation = EvaluationResult(next_tasks=("ghost",))
    fold(state, succeeded("run-1", "check", evaluation=evaluation))
    decisions = advance(state, T0 + dt.timedelta(hours=1), refuse)
    verdict = decisions[0]
    assert isinstance(verdict, TaskFailed) and verdict.reason == "invalid_evaluation"
    assert not any(isinstance(e, TaskRetryScheduled | TaskQueued) for e in decisions)
    assert state.tasks["check"].status == FAILED and state.tasks["check"].attempt == 1
    assert isinstance(decisions[-1], RunFailed)


def test_a_bad_decision_file_reported_by_the_agent_is_not_retried_either() -> None:
    state, (q,) = start(node("check", retries=3, evaluation_point=True))
    assert isinstance(q, TaskQueued)
    fold(state, started(q))
    fold(
        state,
        TaskFailed(
            run_id="run-1",
            ts=T0,
            task_id="check",
            attempt=1,
            reason="invalid_evaluation",
            message="invalid evaluation result: unknown key 'next_task'",
        ),
    )
    assert state.tasks["check"].status == FAILED
    assert isinstance(advance(state, T0 + dt.timedelta(hours=1))[-1], RunFailed)


def test_a_repeated_dependency_is_counted_and_released_once_per_listing() -> None:
    state, _ = start(node("a"), node("b", "a", "a"))
    assert state.tasks["b"].remaining == 2
    fold(state, succeeded("run-1", "a"))
    assert state.tasks["b"].remaining == 0
    assert queued_ids(advance(state, T0)) == ["b"]
