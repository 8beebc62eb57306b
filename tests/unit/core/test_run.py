"""Rules of the run state machine, one test per rule."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from core.definitions import DefinitionErrors
from core.errors import Invalid
from core.events import (
    AnyEvent,
    EvaluationResult,
    GraphExtended,
    QueuedTask,
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
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    each_queued,
    encode,
    msg_id,
)
from core.graph import NO_OVERRIDES, GraphError, Overrides, TaskNode
from core.run import (
    EVALUATING,
    FAILED,
    PENDING,
    QUEUED,
    QUEUED_PER_EVENT,
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
    decide,
    dispatch_for,
    fold,
    next_wakeup,
    replay,
    run_summary,
    summary,
)
from core.snapshots import RetrySpec
from tests.unit.core.runkit import (
    DIAMOND,
    T0,
    failed,
    node,
    queued,
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
    (q,) = queued(advance(state, T0))
    assert q.queue == "gpu"
    assert dispatch_for(state, q.task_id).queue == "gpu"


def test_dispatch_env_is_context_under_parameters() -> None:
    n = TaskNode(id="t", task_id="t", command="echo $A", parameters={"A": "task", "B": "task"})
    state = fold(None, scheduled(n, context={"A": "ctx", "C": "ctx"}))
    assert state is not None
    decisions = advance(state, T0)
    assert [type(e) for e in decisions] == [TasksQueued]
    (q,) = queued(decisions)
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
    assert isinstance(q, TasksQueued)
    assert [(t.task_id, t.attempt) for t in q.tasks] == [("a", 2)]
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
    (decision,) = events
    assert isinstance(decision, TasksQueued)
    (qa,) = each_queued(decision)
    for event in (decision, qa, started(qa), succeeded("run-1", "a")):
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
    state, events = start(node("a"))
    (qa,) = queued(events)
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
    state, events = start(node("a", timeout=5))
    (qa,) = queued(events)
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
    state, events = start(*DIAMOND)
    assert queued_ids(events) == ["a"]
    fold(state, RunCancelRequested(run_id="run-1", ts=T0, reason="user"))
    decisions = advance(state, T0)
    assert [type(e) for e in decisions] == [TaskCancelled, *[TaskSkipped] * 3, RunCancelled]
    # b and c were never ready: they are skipped once a is cancelled (it blocks them)
    assert state.tasks["b"].status == SKIPPED and state.tasks["d"].status == SKIPPED
    assert state.status == "cancelled"


def test_cancel_waits_for_running_tasks() -> None:
    state, events = start(*DIAMOND)
    (qa,) = queued(events)
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


# --- queueing: one TasksQueued per decision --------------------------------------------------


def batch(*attempts: tuple[str, int], run_id: str = "run-1", ts: dt.datetime = T0) -> TasksQueued:
    tasks = tuple(QueuedTask(task_id=t, attempt=a, queue="default") for t, a in attempts)
    return TasksQueued(run_id=run_id, ts=ts, tasks=tasks)


@pytest.mark.parametrize("n", [QUEUED_PER_EVENT, QUEUED_PER_EVENT + 1, 2 * QUEUED_PER_EVENT + 1])
def test_a_decision_queues_its_ready_tasks_in_events_of_at_most_queued_per_event(n: int) -> None:
    ids = [f"task-{i:05d}-{'x' * 80}" for i in range(n)]  # long ids: the largest events
    state = fold(None, scheduled(*(node(t) for t in ids)))
    assert state is not None
    decisions = decide(state, T0)  # one decision
    chunks = [e for e in decisions if isinstance(e, TasksQueued)]
    assert chunks == decisions
    assert len(chunks) == math.ceil(n / QUEUED_PER_EVENT)
    assert [len(c.tasks) for c in chunks[:-1]] == [QUEUED_PER_EVENT] * (len(chunks) - 1)
    # every ready task exactly once, in the order they became ready
    assert [(t.task_id, t.attempt) for c in chunks for t in c.tasks] == [(t, 1) for t in ids]
    assert len({msg_id(c) for c in chunks}) == len(chunks)  # no chunk is a duplicate of another
    assert all(len(encode(c)) < 1_000_000 for c in chunks)  # NATS's message limit
    for c in chunks:
        fold(state, c)
    assert all(state.tasks[t].status == QUEUED for t in ids)
    assert decide(state, T0) == []


def test_first_attempts_and_due_retries_share_the_chunks_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("core.run.QUEUED_PER_EVENT", 3)
    graph = (node("a", retries=1), node("b", retries=1), node("x"), node("c", "x"), node("d", "x"))
    state, events = start(*graph)
    assert queued_ids(events) == ["a", "b", "x"]
    fold(state, failed("run-1", "a"))
    fold(state, failed("run-1", "b"))
    advance(state, T0)  # their retries, due at T0 + 10 s
    fold(state, succeeded("run-1", "x"))
    decisions = decide(state, T0 + dt.timedelta(seconds=10))  # one decision
    assert [
        [(t.task_id, t.attempt) for t in e.tasks] for e in decisions if isinstance(e, TasksQueued)
    ] == [
        [("c", 1), ("d", 1), ("a", 2)],
        [("b", 2)],
    ]
    assert len(decisions) == 2


def test_a_tasks_queued_folded_again_or_overlapping_queues_each_attempt_once() -> None:
    state = fold(None, scheduled(node("a"), node("b"), node("c"), node("d", "c"), node("e")))
    assert state is not None
    t1 = T0 + dt.timedelta(seconds=5)
    first = batch(("a", 1), ("b", 1), ("c", 1))
    fold(state, first)
    before = state.snapshot()
    fold(state, first)  # redelivered
    assert state.snapshot() == before
    (qa, _, _) = each_queued(first)
    fold(state, started(qa))
    fold(state, succeeded("run-1", "c"))
    before = state.snapshot()
    fold(state, first)  # redelivered once a runs and c is done
    assert state.snapshot() == before
    # Another set of attempts (another message id), partly queued already: a runs, b is
    # queued, c is done; only d and e are new.
    fold(state, batch(("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1), ts=t1))

    def seen(task_id: str) -> tuple[str, int, dt.datetime | None]:
        task = state.tasks[task_id]
        return task.status, task.attempt, task.queued_at

    assert [seen(t) for t in "abcde"] == [
        (RUNNING, 1, T0),
        (QUEUED, 1, T0),
        (SUCCEEDED, 1, T0),
        (QUEUED, 1, t1),
        (QUEUED, 1, t1),
    ]
    assert list(state.queued) == ["b", "d", "e"]
    assert advance(state, t1) == []


def test_a_stale_attempt_in_a_tasks_queued_queues_nothing() -> None:
    state, _ = start(node("a", retries=1), node("b"))
    fold(state, failed("run-1", "a"))
    advance(state, T0)  # attempt 2 waits for its backoff
    before = state.snapshot()
    fold(state, batch(("a", 1), ("b", 1), ts=T0 + dt.timedelta(seconds=1)))  # both old news
    assert state.snapshot() == before
    assert state.tasks["a"].status == UP_FOR_RETRY and state.tasks["a"].attempt == 2


def per_task(event: AnyEvent) -> tuple[AnyEvent, ...]:
    """`event` as an orchestrator that wrote one TaskQueued per attempt would have logged it."""
    return each_queued(event) if isinstance(event, TasksQueued) else (event,)


def run_log() -> list[AnyEvent]:
    """A whole run as the orchestrator logs it now: a's first attempt fails, its second succeeds,
    then b and c are queued together, then d."""
    first = scheduled(node("a", retries=1), node("b", "a"), node("c", "a"), node("d", "b", "c"))
    state = fold(None, first)
    assert state is not None
    log: list[AnyEvent] = [first]
    now = T0
    while not state.finished:
        decisions = advance(state, now)
        log += decisions
        for q in queued(decisions):
            result = failed if (q.task_id, q.attempt) == ("a", 1) else succeeded
            for event in (started(q), result(q.run_id, q.task_id, q.attempt, ts=now)):
                fold(state, event)
                log.append(event)
        now += dt.timedelta(seconds=30)
    return log


def test_an_old_log_of_one_task_queued_per_attempt_folds_to_the_same_states() -> None:
    new = run_log()
    assert [
        [(t.task_id, t.attempt) for t in e.tasks] for e in new if isinstance(e, TasksQueued)
    ] == [
        [("a", 1)],
        [("a", 2)],
        [("b", 1), ("c", 1)],
        [("d", 1)],
    ]
    assert isinstance(new[-1], RunSucceeded)
    # The same run, folded event by event from either log: the same state after each decision.
    state_new = fold(None, new[0])
    state_old = fold(None, new[0])
    assert state_new is not None and state_old is not None
    for event in new[1:]:
        fold(state_new, event)
        old = per_task(event)
        assert not any(isinstance(e, TasksQueued) for e in old)
        for part in old:
            fold(state_old, part)
        assert state_old.snapshot() == state_new.snapshot(), event
    # A log that changes style at any point (an orchestrator upgraded mid-run) folds the same.
    final = replay(new)["run-1"].snapshot()
    for split in range(1, len(new)):
        mixed = [e for event in new[:split] for e in per_task(event)] + new[split:]
        assert replay(mixed)["run-1"].snapshot() == final, split


def test_a_tasks_queued_message_id_names_its_attempts_not_its_time() -> None:
    ab = batch(("a", 1), ("b", 1), run_id="r")
    later = batch(("a", 1), ("b", 1), run_id="r", ts=T0 + dt.timedelta(days=1))
    assert msg_id(ab) == msg_id(later)
    assert msg_id(ab).startswith("r/TasksQueued/")
    others = [
        batch(("a", 1), run_id="r"),  # fewer
        batch(("a", 1), ("b", 1), ("c", 1), run_id="r"),  # more
        batch(("a", 1), ("c", 1), run_id="r"),  # another task
        batch(("a", 1), ("b", 2), run_id="r"),  # another attempt
        batch(("a", 1), ("b", 1), run_id="s"),  # another run
        batch(("ab", 1), run_id="r"),  # the same characters, split otherwise
        batch(("a", 11), run_id="r"),
        batch(("a1", 1), run_id="r"),
        batch(run_id="r"),
    ]
    assert len({msg_id(ab), *(msg_id(e) for e in others)}) == 1 + len(others)


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
        (decision,) = advance(state, now)
        assert isinstance(decision, TasksQueued)
        assert [(t.task_id, t.attempt) for t in decision.tasks] == [("a", attempt + 1)]
    assert waits == [1, 3, 9, 20, 20]


# --- cancel and retries --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["failed", "lost"])
def test_a_failure_after_a_cancel_request_is_never_retried(how: str) -> None:
    state, events = start(node("a", retries=3), node("b", "a"))
    (qa,) = queued(events)
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
    assert not any(isinstance(e, TaskQueued | TasksQueued) for e in decisions)
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
    assert not any(isinstance(e, TaskRetryScheduled | TaskQueued | TasksQueued) for e in decisions)
    assert state.tasks["check"].status == FAILED and state.tasks["check"].attempt == 1
    assert isinstance(decisions[-1], RunFailed)


def test_a_bad_decision_file_reported_by_the_agent_is_not_retried_either() -> None:
    state, events = start(node("check", retries=3, evaluation_point=True))
    (q,) = queued(events)
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
