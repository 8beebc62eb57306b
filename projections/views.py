"""The typed rows the UI, the API and the CLI read: what every read-model store holds.

These are derived data, rebuilt from the event log at will (`cyclonetix replay`), so unlike the
stored types of `core.events` they may change shape freely: a store whose rows are out of date is
reset and replayed. Every store returns exactly these structs, so the contract suite
(tests/contract/test_read_model.py) can compare stores field by field.

Agents and queue depths are not rows here: they are read live from NATS (`cx_agents`, consumer
info), never projected.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Generic, Literal, TypeVar

import msgspec

from core.run import RunStatus, TaskStatus
from core.snapshots import TaskNode

T = TypeVar("T")

# Rows are gc=False: they hold only strings, numbers, timestamps and containers of those (no
# cycle can go through them), so the collector need not track the millions a replay makes.


class AttemptStatus(enum.StrEnum):
    """Where one attempt of a task stands (a task's status spans all its attempts)."""

    QUEUED = "queued"
    RUNNING = "running"
    EVALUATING = "evaluating"  # an evaluation point's command succeeded; the graph grows next
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # `reason` says how: exit, timeout, lost, invalid_evaluation, ...
    CANCELLED = "cancelled"


TERMINAL_RUN_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


def empty_counts() -> dict[TaskStatus, int]:
    """A count per task status, every status present (so stores compare equal)."""
    return dict.fromkeys(TaskStatus, 0)


class RunRow(msgspec.Struct, kw_only=True, gc=False):
    """One run, as the runs list shows it.

    `status` is `core.run.run_summary`'s: `scheduled` while no task has left `pending`.
    `scheduled_seq` (the stream sequence of its RunScheduled) orders the list, newest first.
    `last_seq` is the sequence of the last event that changed the run (or one of its tasks).
    """

    run_id: str
    kind: Literal["outcome", "dag"]
    target: str  # task id (outcome) or dag id
    name: str
    status: RunStatus
    trigger: str
    context_id: str | None = None
    idempotency_key: str | None = None
    rerun_of: str | None = None  # the run this one reruns (RunScheduled.rerun_of)
    requested_by: str | None = None  # who scheduled it (RunScheduled.requested_by)
    counts: dict[TaskStatus, int]
    tasks_total: int
    failed_tasks: tuple[str, ...] = ()
    cancel_requested: bool = False
    cancel_reason: str = ""
    cancelled_by: str = ""  # RunCancelRequested.requested_by, else its channel (`by`)
    scheduled_at: dt.datetime
    started_at: dt.datetime | None = None  # the first TaskStarted
    ended_at: dt.datetime | None = None  # the run's terminal event
    scheduled_seq: int
    last_seq: int


class TaskRunRow(msgspec.Struct, kw_only=True, gc=False):
    """One task (graph node) of a run, at its current attempt."""

    run_id: str
    task_id: str  # the node id (`task` or `task:parameter_set`)
    definition: str  # the task definition's id
    name: str = ""
    queue: str
    status: TaskStatus
    attempt: int  # 0 until first queued; during a retry wait, the attempt that comes next
    max_attempts: int  # 1 + retries
    agent_id: str = ""
    delivery: int = 0
    queued_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    not_before: dt.datetime | None = None  # a retry waits until then
    exit_code: int | None = None
    duration_ms: float | None = None
    reason: str = ""
    message: str = ""
    evaluation_point: bool = False
    last_seq: int


class AttemptRow(msgspec.Struct, kw_only=True, gc=False):
    """One attempt of a task: what one dispatch (with its redeliveries) came to."""

    run_id: str
    task_id: str
    attempt: int
    status: AttemptStatus
    queue: str
    agent_id: str = ""
    host: str = ""
    delivery: int = 0  # the last delivery that started it
    queued_at: dt.datetime
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    exit_code: int | None = None
    duration_ms: float | None = None
    reason: str = ""
    message: str = ""
    last_seq: int


class EventRow(msgspec.Struct, kw_only=True, gc=False):
    """One event of a run's history, as stored in the log (`body` is its JSON)."""

    seq: int
    run_id: str
    type: str
    ts: dt.datetime
    task_id: str | None = None
    attempt: int | None = None
    body: str


class RunDetail(msgspec.Struct, kw_only=True):
    """One run with its tasks and graph; `as_of_seq` is the checkpoint the read reflects (a
    page subscribes to live events from there)."""

    run: RunRow
    tasks: tuple[TaskRunRow, ...]  # in graph order (nodes added by evaluation points last)
    graph: tuple[TaskNode, ...]  # the same order
    as_of_seq: int


class RunFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What `list_runs` and `count_runs` select; every field given must match.

    `target` is the dag id of a dag run or the outcome task of an outcome run (narrow with
    `kind`); `task` selects runs whose graph holds that task definition; `since`/`until` bound
    `scheduled_at` (since inclusive, until exclusive).
    """

    status: RunStatus | None = None
    kind: Literal["outcome", "dag"] | None = None
    target: str | None = None
    task: str | None = None
    trigger: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


ALL_RUNS = RunFilter()


class Page(msgspec.Struct, Generic[T], kw_only=True):
    """One page of a list, newest first; pass `next_cursor` back for the next (None: the end).

    Cursors are positions in the log (the `scheduled_seq` of the last row), so runs inserted
    while paging never shift a page: no row is repeated or missed.
    """

    items: tuple[T, ...]
    next_cursor: str | None = None
