"""The pure projection (projections.rows): which rows one event changes, and which it leaves."""

from __future__ import annotations

import datetime as dt
import random

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from core.events import (
    AnyEvent,
    EvaluationResult,
    GraphExtended,
    QueuedTask,
    RunSucceeded,
    TaskFailed,
    TaskQueued,
    TaskRetryScheduled,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    each_queued,
)
from core.run import RunStatus, TaskStatus
from projections import rows
from projections.views import AttemptStatus, RunRow
from tests.unit.core.runkit import T0, node, scheduled
from tests.unit.core.test_run_properties import simulate

RUN = "run-1"


class Projector:
    """The smallest store: the cache of open runs and nothing else."""

    def __init__(self) -> None:
        self.known: dict[str, rows.OpenRun | rows.Finished] = {}
        self.seq = 0

    def lookup(self, run_id: str) -> rows.OpenRun | rows.Finished | None:
        return self.known.get(run_id)

    def __call__(self, event: AnyEvent | None) -> rows.Changes:
        self.seq += 1
        changes = rows.apply(self.lookup, self.seq, event)
        if changes.opened is not None:
            self.known[changes.opened.state.run_id] = changes.opened
        if changes.closed and event is not None:
            self.known[event.run_id] = rows.FINISHED
        return changes


def run_of(changes: rows.Changes) -> RunRow:
    """The run's row after `changes` (made now: before any later change to the run)."""
    (made,) = rows.run_rows([changes])
    return made


def seen(c: rows.Changes) -> tuple[object, ...]:
    """What a store is given by `c` (the run states behind it are other objects in a rebuild)."""
    return (c.seq, c.event, rows.run_rows([c]), c.tasks, c.attempts, c.graph, c.closed)


def only_the_event(changes: rows.Changes) -> bool:
    return changes.event is not None and changes == rows.Changes(
        seq=changes.seq, event=changes.event
    )


def test_a_new_run_gives_its_row_its_tasks_and_its_graph() -> None:
    project = Projector()
    changes = project(scheduled(node("a"), node("b", "a")))
    assert changes.opened is not None
    assert run_of(changes).status == RunStatus.SCHEDULED
    assert run_of(changes).counts[TaskStatus.PENDING] == 2
    assert changes.tasks == ()  # pending: a store makes their rows from the graph
    assert [n.id for n in changes.graph] == ["a", "b"]
    assert changes.event is not None and changes.event.type == "RunScheduled"


def test_events_core_ignores_change_no_row() -> None:
    project = Projector()
    project(scheduled(node("a", retries=1)))
    queued = TaskQueued(run_id=RUN, ts=T0, task_id="a", attempt=1, queue="default")
    assert not only_the_event(project(queued))
    assert only_the_event(project(queued))  # a duplicate stored past the dedup window
    project(TaskFailed(run_id=RUN, ts=T0, task_id="a", attempt=1))
    project(TaskRetryScheduled(run_id=RUN, ts=T0, task_id="a", attempt=2, not_before=T0))
    stale = TaskSucceeded(run_id=RUN, ts=T0, task_id="a", attempt=1)
    assert only_the_event(project(stale))  # fenced: attempt 1 is no longer current
    started = TaskStarted(run_id=RUN, ts=T0, task_id="a", attempt=2, agent_id="x")
    first = project(started)
    assert [a.status for a in first.attempts] == [AttemptStatus.RUNNING]
    assert only_the_event(project(started))  # the same delivery again
    moved = project(msgspec.structs.replace(started, agent_id="y", delivery=2))
    assert [t.agent_id for t in moved.tasks] == ["y"]
    assert project(RunSucceeded(run_id=RUN, ts=T0)).closed
    assert only_the_event(project(queued))  # nothing changes a finished run
    assert only_the_event(project(scheduled(node("a"))))  # nor schedules it again


def test_a_queued_attempt_is_made_from_its_task_row_and_not_written() -> None:
    project = Projector()
    project(scheduled(node("a"), node("b")))
    usual = project(queued("a"))
    (attempt,) = usual.attempts
    assert rows.attempts_to_write(usual) == []
    (row,) = usual.tasks
    assert rows.with_queued((), row) == (attempt,)
    # Queued elsewhere than its node says: the row cannot be made, so it is written.
    moved = project(queued("b", queue="gpu"))
    (attempt,) = moved.attempts
    assert rows.attempts_to_write(moved) == [attempt]
    (row,) = moved.tasks
    assert rows.with_queued((attempt,), row) == (attempt,)
    started = project(TaskStarted(run_id=RUN, ts=T0, task_id="a", attempt=1, agent_id="x"))
    (attempt,) = started.attempts
    assert rows.attempts_to_write(started) == [attempt]
    (row,) = started.tasks
    assert rows.with_queued((attempt,), row) == (attempt,)


def queued(*task_ids: str, queue: str = "default", attempt: int = 1) -> TasksQueued:
    tasks = tuple(QueuedTask(task_id=t, attempt=attempt, queue=queue) for t in task_ids)
    return TasksQueued(run_id=RUN, ts=T0, tasks=tasks)


def test_one_tasks_queued_changes_the_row_and_attempt_of_each_task_it_queues() -> None:
    project = Projector()
    project(scheduled(node("a"), node("b"), node("c", "a")))
    changes = project(queued("a", "b"))
    assert [(t.task_id, t.status, t.attempt) for t in changes.tasks] == [
        ("a", TaskStatus.QUEUED, 1),
        ("b", TaskStatus.QUEUED, 1),
    ]
    assert [(a.task_id, a.status) for a in changes.attempts] == [
        ("a", AttemptStatus.QUEUED),
        ("b", AttemptStatus.QUEUED),
    ]
    assert rows.attempts_to_write(changes) == []  # both made from their task rows
    assert run_of(changes).counts[TaskStatus.QUEUED] == 2
    assert run_of(changes).counts[TaskStatus.PENDING] == 1
    # c is not ready, a is queued already: the same event again, or one naming them, is inert.
    assert only_the_event(project(queued("a", "b")))
    assert only_the_event(project(queued("a", "c")))


def test_a_tasks_queued_projects_as_its_attempts_one_event_each() -> None:
    graph = (node("a"), node("b"), node("c"))
    one, each = Projector(), Projector()
    one(scheduled(*graph))
    each(scheduled(*graph))
    together = one(queued("a", "b", "c"))
    apart = [each(q) for q in each_queued(queued("a", "b", "c"))]
    # The same rows, but for the sequence that wrote them.
    seqless = [msgspec.structs.replace(t, last_seq=0) for t in together.tasks]
    assert seqless == [msgspec.structs.replace(t, last_seq=0) for c in apart for t in c.tasks]
    assert run_of(together).counts == run_of(apart[-1]).counts


def test_unknown_runs_and_skipped_entries_change_no_row() -> None:
    project = Projector()
    assert only_the_event(project(TaskQueued(run_id="x", ts=T0, task_id="a", attempt=1, queue="q")))
    assert project(None) == rows.Changes(seq=2)


def test_an_evaluation_point_adds_pending_tasks() -> None:
    project = Projector()
    ev = node("ev", evaluation_point=True)
    project(scheduled(ev))
    project(queued("ev"))
    result = EvaluationResult(next_tasks=("x",))
    done = project(TaskSucceeded(run_id=RUN, ts=T0, task_id="ev", attempt=1, evaluation=result))
    assert [t.status for t in done.tasks] == [TaskStatus.EVALUATING]
    assert [a.status for a in done.attempts] == [AttemptStatus.EVALUATING]
    grown = project(
        GraphExtended(run_id=RUN, ts=T0, task_id="ev", attempt=1, nodes=(node("x", "ev"),))
    )
    assert [(t.task_id, t.status) for t in grown.tasks] == [("ev", TaskStatus.SUCCEEDED)]
    assert [n.id for n in grown.graph] == ["x"]
    assert run_of(grown).tasks_total == 2
    assert run_of(grown).counts[TaskStatus.PENDING] == 1
    assert [a.status for a in grown.attempts] == [AttemptStatus.SUCCEEDED]


@given(seed=st.integers(0, 2**32), data=st.data())
def test_a_run_rebuilt_from_its_history_projects_as_the_one_kept(
    seed: int, data: st.DataObject
) -> None:
    rnd = random.Random(seed)
    log = simulate(seed, rnd.randint(1, 8), rnd.choice((0.0, 0.3)), 100).log
    cut = data.draw(st.integers(1, len(log)))
    kept = Projector()
    for event in log[:cut]:
        kept(event)
    history = list(enumerate(log[:cut], start=1))
    rebuilt = Projector()
    found = rows.rebuild(history)
    assert found is not None
    rebuilt.known[RUN], rebuilt.seq = found, cut
    assert (found is rows.FINISHED) == (kept.known[RUN] is rows.FINISHED)
    for event in log[cut:]:
        assert seen(rebuilt(event)) == seen(kept(event))


def test_the_run_started_when_its_first_task_did() -> None:
    project = Projector()
    project(scheduled(node("a"), node("b")))
    at = T0 + dt.timedelta(seconds=5)
    project(queued("a"))
    changes = project(TaskStarted(run_id=RUN, ts=at, task_id="a", attempt=1, agent_id="x"))
    assert run_of(changes).started_at == at
    assert run_of(changes).status == RunStatus.RUNNING
