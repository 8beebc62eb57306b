"""The projection, written once: one event in, the rows it changes out. Pure: no store, no I/O.

Statuses are never re-derived here. Each open run keeps the run's `core.run.RunState` (in an
`OpenRun`) and every event is folded into it with `core.run.fold`, so the read model agrees with
core by construction: duplicates, redeliveries, stale attempts (fenced by core), retries,
cancellation and graph extensions mean here exactly what they mean to the orchestrator. The rows
of a change are read off the state after the fold; only the tasks the event names (its own; each
attempt of a TasksQueued) and the nodes a GraphExtended adds can change, so an event costs rows
in proportion to what it says, whatever the size of its run.

How a store uses it (see `projections.memory` for the reference):

1. skip entries at or below its checkpoint (a store applies each sequence once);
2. call `apply(lookup, seq, event)` for each entry in order; `lookup(run_id)` returns the run's
   `OpenRun` (held in the store's cache; on a miss, rebuilt with `rebuild` from the run's stored
   event rows), `FINISHED` for a run whose terminal event it holds, or None for a run it never
   saw scheduled. `Changes.opened` is a new run's `OpenRun` to cache; after `Changes.closed` the
   store may drop it (its run row is terminal: lookup then answers FINISHED);
3. write every change of the batch and the batch's last sequence in one atomic write. `apply`
   mutates the cached `OpenRun`s, so when that write fails the store drops its cache (the runs
   are rebuilt from what was committed).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterable
from typing import Final

import msgspec

from core.events import (
    AnyEvent,
    GraphExtended,
    QueuedTask,
    RunCancelRequested,
    RunScheduled,
    TaskCancelled,
    TaskEvent,
    TaskFailed,
    TaskLost,
    TaskQueued,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    encode,
)
from core.run import EVALUATING, PENDING, QUEUED, RunState, RunStatus, TaskRun, fold
from core.snapshots import TaskNode
from projections.views import (
    AttemptRow,
    AttemptStatus,
    EventRow,
    RunRow,
    TaskRunRow,
    empty_counts,
)


class OpenRun:
    """What the projection keeps per open run: core's state plus the few facts core drops."""

    __slots__ = (
        "attempts",
        "cancelled_by",
        "context_id",
        "counts",
        "idempotency_key",
        "requested_by",
        "rerun_of",
        "scheduled_seq",
        "started_at",
        "state",
    )

    def __init__(self, state: RunState, scheduled: RunScheduled, scheduled_seq: int) -> None:
        self.state = state
        self.scheduled_seq = scheduled_seq
        self.context_id = scheduled.context_id
        self.idempotency_key = scheduled.idempotency_key
        self.rerun_of = scheduled.rerun_of
        self.requested_by = scheduled.requested_by
        self.counts = empty_counts()
        self.counts[PENDING] = len(state.tasks)
        self.started_at: dt.datetime | None = None
        self.cancelled_by = ""
        self.attempts: dict[str, AttemptRow] = {}  # task id -> its latest attempt's row


class Finished:
    """The lookup's answer for a run that has ended: no event changes it any more."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FINISHED"


FINISHED: Final = Finished()

Lookup = Callable[[str], OpenRun | Finished | None]


class Changes(msgspec.Struct, kw_only=True, gc=False):
    """What one entry changes; a store upserts the rows (keyed by run, task, attempt)."""

    seq: int
    event: EventRow | None = None  # None: a skipped entry (it only advances the checkpoint)
    # The run whose row this entry changed. Its row is made once per run and batch, as of the
    # run's last change in it (`run_rows`): making one per event cost a third of a replay.
    of: OpenRun | None = None
    tasks: tuple[TaskRunRow, ...] = ()  # rows of tasks already in the graph that changed
    attempts: tuple[AttemptRow, ...] = ()  # one per changed task at most
    # Nodes added to the run's graph (append in this order). They are pending: a store that
    # keeps rows of pending tasks makes them with `pending_row(run_id, node, seq)`; one that
    # makes them when read skips that work (a 5,000-task RunScheduled: 5,000 rows).
    graph: tuple[TaskNode, ...] = ()
    opened: OpenRun | None = None
    closed: bool = False


def event_row(seq: int, event: AnyEvent) -> EventRow:
    task_id, attempt = (
        (event.task_id, event.attempt) if isinstance(event, TaskEvent) else (None, None)
    )
    return EventRow(
        seq=seq,
        run_id=event.run_id,
        type=type(event).__name__,
        ts=event.ts,
        task_id=task_id,
        attempt=attempt,
        body=encode(event).decode(),
    )


def apply(lookup: Lookup, seq: int, event: AnyEvent | None) -> Changes:
    """The changes `event` (at stream sequence `seq`) makes; None is an entry to skip."""
    if event is None:
        return Changes(seq=seq)
    row = event_row(seq, event)
    known = lookup(event.run_id)
    if known is None:
        if isinstance(event, RunScheduled):
            return _open(seq, event, row)
        return Changes(seq=seq, event=row)  # history of a run never scheduled: kept, inert
    if isinstance(known, Finished) or known.state.finished:
        return Changes(seq=seq, event=row)
    return _advance(known, seq, event, row)


def rebuild(history: Iterable[tuple[int, AnyEvent]]) -> OpenRun | Finished | None:
    """A run's projection state from its stored events (a store's cache miss)."""
    found: list[OpenRun | Finished | None] = [None]

    def lookup(_: str) -> OpenRun | Finished | None:
        return found[0]

    for seq, event in history:
        changes = apply(lookup, seq, event)
        if changes.opened is not None:
            found[0] = changes.opened
        if changes.closed:
            found[0] = FINISHED
    return found[0]


def _open(seq: int, event: RunScheduled, row: EventRow) -> Changes:
    state = fold(None, event)
    assert state is not None
    run = OpenRun(state, event, seq)
    graph = tuple(t.node for t in state.tasks.values())
    return Changes(seq=seq, event=row, of=run, graph=graph, opened=run)


def _task_key(t: TaskRun) -> tuple[object, ...]:
    return (t.status, t.attempt, t.agent_id, t.delivery, t.exit_code, t.reason, t.finished_at)


def _advance(run: OpenRun, seq: int, event: AnyEvent, row: EventRow) -> Changes:
    state = run.state
    tasks = state.tasks
    # The tasks the event names, each with what it says of it (a TasksQueued: each attempt),
    # and each task's key and status before the fold.
    named: Iterable[tuple[str, TaskEvent | QueuedTask]]
    if isinstance(event, TaskEvent):
        named = ((event.task_id, event),)
    elif isinstance(event, TasksQueued):
        named = {t.task_id: t for t in event.tasks}.items()  # (once each)
    else:
        named = ()
    before = [
        (task, said, _task_key(task), task.status)
        for task_id, said in named
        if (task := tasks.get(task_id)) is not None
    ]
    n_tasks = len(tasks)
    cancel_before = state.cancel_requested

    fold(state, event)

    rows: list[TaskRunRow] = []
    attempts: list[AttemptRow] = []
    graph: tuple[TaskNode, ...] = ()
    for task, said, key, status_before in before:
        if _task_key(task) == key:
            continue
        run.counts[status_before] -= 1
        run.counts[task.status] += 1
        if isinstance(said, QueuedTask):
            attempt: AttemptRow | None = _queued(
                run, said.task_id, said.attempt, said.queue, event.ts, seq
            )
        else:
            attempt = _attempt(run, task, seq, said)
            if isinstance(said, TaskStarted) and run.started_at is None:
                run.started_at = said.ts
        if attempt is not None:
            run.attempts[task.node.id] = attempt
            attempts.append(attempt)
        rows.append(task_row(state.run_id, task, run.attempts.get(task.node.id), seq))
    added = len(state.tasks) - n_tasks
    if added:
        new = list(itertools.islice(reversed(state.tasks.values()), added))[::-1]
        run.counts[PENDING] += added
        graph = tuple(t.node for t in new)
    if isinstance(event, RunCancelRequested) and state.cancel_requested and not cancel_before:
        run.cancelled_by = event.requested_by or event.by  # who, else the channel
    if not rows and not graph and cancel_before == state.cancel_requested and not state.finished:
        return Changes(seq=seq, event=row)  # core ignored it: a duplicate or a fenced result
    return Changes(
        seq=seq,
        event=row,
        of=run,
        tasks=tuple(rows),
        attempts=tuple(attempts),
        graph=graph,
        closed=state.finished,
    )


def _attempt(run: OpenRun, task: TaskRun, seq: int, e: TaskEvent) -> AttemptRow | None:
    """The attempt row an accepted task event leaves (None: the event concerns no attempt)."""
    if isinstance(e, TaskQueued):
        return _queued(run, e.task_id, e.attempt, e.queue, e.ts, seq)
    if not isinstance(e, TaskStarted | TaskSucceeded | TaskFailed | TaskLost | TaskCancelled):
        if isinstance(e, GraphExtended):
            prev = run.attempts.get(e.task_id)
            if prev is not None and prev.attempt == e.attempt:
                return msgspec.structs.replace(prev, status=AttemptStatus.SUCCEEDED, last_seq=seq)
        return None  # retry scheduled, skipped: no attempt of its own
    prev = run.attempts.get(e.task_id)
    if prev is None or prev.attempt != e.attempt:  # core queued it implicitly (see fold)
        prev = _queued(run, e.task_id, e.attempt, task.node.queue, e.ts, seq)
    r = msgspec.structs.replace(prev, last_seq=seq)
    if isinstance(e, TaskStarted):
        if r.status == AttemptStatus.QUEUED:
            r.status, r.started_at = AttemptStatus.RUNNING, e.ts
        r.agent_id, r.host, r.delivery = e.agent_id, e.host, e.delivery
    elif isinstance(e, TaskSucceeded):
        evaluating = task.status == EVALUATING
        r.status = AttemptStatus.EVALUATING if evaluating else AttemptStatus.SUCCEEDED
        r.ended_at, r.exit_code, r.duration_ms = e.ts, e.exit_code, e.duration_ms
        r.agent_id = e.agent_id or r.agent_id
    elif isinstance(e, TaskFailed):
        r.status, r.reason, r.message = AttemptStatus.FAILED, e.reason, e.message
        r.ended_at, r.exit_code, r.duration_ms = e.ts, e.exit_code, e.duration_ms
        r.agent_id = e.agent_id or r.agent_id
    elif isinstance(e, TaskLost):
        r.status, r.reason, r.message, r.ended_at = AttemptStatus.FAILED, "lost", e.message, e.ts
    elif r.status in (AttemptStatus.QUEUED, AttemptStatus.RUNNING):  # TaskCancelled
        r.status, r.reason, r.ended_at = AttemptStatus.CANCELLED, "cancelled", e.ts
    else:
        return None  # a failed attempt's task was cancelled before its retry: the attempt stays
    return r


def _queued(
    run: OpenRun, task_id: str, attempt: int, queue: str, ts: dt.datetime, seq: int
) -> AttemptRow:
    return AttemptRow(
        run_id=run.state.run_id,
        task_id=task_id,
        attempt=attempt,
        status=AttemptStatus.QUEUED,
        queue=queue,
        queued_at=ts,
        last_seq=seq,
    )


def task_row(run_id: str, t: TaskRun, attempt: AttemptRow | None, seq: int) -> TaskRunRow:
    node = t.node
    current = attempt is not None and attempt.attempt == t.attempt
    return TaskRunRow(
        run_id=run_id,
        task_id=node.id,
        definition=node.task_id,
        name=node.name,
        queue=node.queue,
        status=t.status,
        attempt=t.attempt,
        max_attempts=node.retries.count + 1,
        agent_id=t.agent_id,
        delivery=t.delivery,
        queued_at=t.queued_at,
        started_at=t.started_at,
        ended_at=t.finished_at,
        not_before=t.not_before,
        exit_code=t.exit_code,
        duration_ms=attempt.duration_ms if current and attempt is not None else None,
        reason=t.reason,
        message=t.message,
        evaluation_point=node.evaluation_point,
        last_seq=seq,
    )


def pending_row(run_id: str, node: TaskNode, seq: int) -> TaskRunRow:
    """The row of a task that joined its run's graph at `seq` and has not left pending."""
    return task_row(run_id, TaskRun(node, 0), None, seq)


def queued_attempt(t: TaskRunRow) -> AttemptRow | None:
    """The row of a task's current attempt while it waits in its queue, made from the task's
    own row (None when the task is not queued). A store that makes this row when read need not
    write it: at a run's start every task is queued at once (5,000 attempt rows fewer)."""
    if t.status != QUEUED or t.queued_at is None:
        return None
    return AttemptRow(
        run_id=t.run_id,
        task_id=t.task_id,
        attempt=t.attempt,
        status=AttemptStatus.QUEUED,
        queue=t.queue,
        queued_at=t.queued_at,
        last_seq=t.last_seq,
    )


def attempts_to_write(c: Changes) -> list[AttemptRow]:
    """`c.attempts`, but those that `queued_attempt` of their task's row in `c` makes as is."""
    if not c.attempts:
        return []
    made = {t.task_id: t for t in c.tasks}
    return [
        a
        for a in c.attempts
        if a.status != AttemptStatus.QUEUED
        or (t := made.get(a.task_id)) is None
        or queued_attempt(t) != a
    ]


def with_queued(stored: Iterable[AttemptRow], task: TaskRunRow | None) -> tuple[AttemptRow, ...]:
    """A task's attempts, by number: those stored, and its queued attempt made from its row
    if none is stored (see `attempt_to_write`)."""
    found = {a.attempt: a for a in stored}
    queued = queued_attempt(task) if task is not None else None
    if queued is not None and queued.attempt not in found:
        found[queued.attempt] = queued
    return tuple(found[n] for n in sorted(found))


def run_rows(changes: Iterable[Changes]) -> list[RunRow]:
    """The row of each run that `changes` (a batch, in order) changed, as of its last change
    there, in the order of each run's first change. Made when the batch has been applied: no
    later entry of it changed those runs, so their state is still what it was then."""
    last: dict[str, Changes] = {}
    for c in changes:
        if c.of is not None:
            last[c.of.state.run_id] = c
    return [run_row(c.of, c.seq) for c in last.values() if c.of is not None]


def run_row(run: OpenRun, seq: int) -> RunRow:
    s = run.state
    status = s.status
    if not s.finished and run.counts[PENDING] == len(s.tasks):
        status = RunStatus.SCHEDULED  # as core.run.run_summary: no task has left pending yet
    return RunRow(
        run_id=s.run_id,
        kind=s.kind,
        target=s.target,
        name=s.name,
        status=status,
        trigger=s.trigger,
        context_id=run.context_id,
        idempotency_key=run.idempotency_key,
        rerun_of=run.rerun_of,
        requested_by=run.requested_by,
        counts=dict(run.counts),
        tasks_total=len(s.tasks),
        failed_tasks=tuple(s.failed_tasks),
        cancel_requested=s.cancel_requested,
        cancel_reason=s.cancel_reason,
        cancelled_by=run.cancelled_by,
        scheduled_at=s.scheduled_at,
        started_at=run.started_at,
        ended_at=s.ended_at,
        scheduled_seq=run.scheduled_seq,
        last_seq=seq,
    )
