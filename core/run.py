"""The run state machine: `fold` events into a RunState, `decide` what must happen next.

Both are pure. `fold` applies one event and ignores anything that does not fit the current state
(duplicates, redeliveries, results of attempts that are no longer current), so folding the same
log always gives the same state and folding an event twice changes nothing. `decide` reads the
state and returns the events the orchestrator should append; it never mutates.

Readiness is counter based: every task keeps the number of dependencies that have not yet
succeeded, and a success decrements only its dependents' counters (O(out-degree) per event).
Everything `decide` acts on is kept in small work sets, so deciding never rescans a whole run.

Fencing: a result (started, succeeded, failed, lost, cancelled) for an attempt that is not the
task's current one changes nothing.

Retries: a failed or lost attempt is followed by another while the task has retries left
(`RetrySpec`: `delay_seconds * backoff ** (retry - 1)`, capped), with two exceptions:
- after a cancel request no retry follows: a failure ends the task (`failed`), and a retry
  decided before the request is cancelled before it is queued;
- `invalid_evaluation` is never retried: the evaluation point's command succeeded, but its
  decision was malformed or asked for something the definitions cannot give. Running the same
  command again would ask the same question of the same definitions, so the task fails at once
  whatever its retries (fix the command or the definitions, then run again).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from core.events import (
    AnyEvent,
    Dispatch,
    EvaluationResult,
    FailureReason,
    GraphExtended,
    QueuedTask,
    RunCancelled,
    RunCancelRequested,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskCancelled,
    TaskEvent,
    TaskFailed,
    TaskLost,
    TaskQueued,
    TaskRetryScheduled,
    TaskSkipped,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
)
from core.graph import Overrides, TaskNode, overrides_from, task_environment


class TaskStatus(enum.StrEnum):
    """Where one task of a run stands."""

    PENDING = "pending"  # waiting for dependencies (or for a queue decision once they are met)
    QUEUED = "queued"
    RUNNING = "running"
    EVALUATING = "evaluating"  # an evaluation point succeeded; its graph extension is pending
    UP_FOR_RETRY = "up_for_retry"  # an attempt failed and another one will follow
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class RunStatus(enum.StrEnum):
    """Where a run stands."""

    SCHEDULED = "scheduled"  # only in views (RunSummary): running, but no task queued yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The module constants older code uses: aliases of the members.
PENDING = TaskStatus.PENDING
QUEUED = TaskStatus.QUEUED
RUNNING = TaskStatus.RUNNING
EVALUATING = TaskStatus.EVALUATING
UP_FOR_RETRY = TaskStatus.UP_FOR_RETRY
SUCCEEDED = TaskStatus.SUCCEEDED
FAILED = TaskStatus.FAILED
SKIPPED = TaskStatus.SKIPPED
CANCELLED = TaskStatus.CANCELLED
TASK_DONE = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELLED})

RUN_SCHEDULED = RunStatus.SCHEDULED
RUN_RUNNING = RunStatus.RUNNING
RUN_SUCCEEDED = RunStatus.SUCCEEDED
RUN_FAILED = RunStatus.FAILED
RUN_CANCELLED = RunStatus.CANCELLED

# How long past its own timeout a running task may stay silent before the orchestrator fails it
# (the agent enforces the timeout; this catches an agent that vanished with the task).
TIMEOUT_GRACE = dt.timedelta(seconds=60)
# How long a cancelled run waits at most for the report of an attempt started after its
# cancellation (RunState.late_starts): its agent is told to kill it at once, but the report can
# be lost (a dead agent, or deduplicated against an earlier result of that attempt).
LATE_START_GRACE = dt.timedelta(seconds=15)
# The most attempts one TasksQueued holds: a 100,000-task run starts with 100 events, each well
# under NATS's 1 MB message limit (about 100 bytes an attempt with long task ids).
QUEUED_PER_EVENT = 1000

# Extends a run's graph for an evaluation point: (existing nodes, node id, result, the run's
# schedule-time parameter overrides) -> new nodes. Raises an exception with a one-line message
# when the result asks for something impossible.
Extender = Callable[[dict[str, TaskNode], str, EvaluationResult, Overrides], tuple[TaskNode, ...]]


class TaskRun:
    """Current state of one task (node) of a run."""

    __slots__ = (
        "agent_id",
        "attempt",
        "delivery",
        "evaluation",
        "exit_code",
        "finished_at",
        "message",
        "node",
        "not_before",
        "queued_at",
        "reason",
        "remaining",
        "started_at",
        "status",
    )

    def __init__(self, node: TaskNode, remaining: int) -> None:
        self.node = node
        self.status: TaskStatus = PENDING
        self.attempt = 0
        self.remaining = remaining
        self.not_before: dt.datetime | None = None
        self.agent_id = ""
        self.delivery = 0
        self.queued_at: dt.datetime | None = None
        self.started_at: dt.datetime | None = None
        self.finished_at: dt.datetime | None = None
        self.exit_code: int | None = None
        self.reason = ""
        self.message = ""
        self.evaluation: EvaluationResult | None = None

    def snapshot(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class RunState:
    """Everything the orchestrator knows about one run, derived only from its events."""

    __slots__ = (
        "blocked",
        "cancel_reason",
        "cancel_requested",
        "context",
        "deadlines",
        "dependents",
        "ended_at",
        "evaluating",
        "failed_tasks",
        "failing",
        "kind",
        "late_starts",
        "name",
        "open_tasks",
        "params",
        "queued",
        "ready",
        "retry_wait",
        "run_id",
        "scheduled_at",
        "status",
        "target",
        "tasks",
        "trigger",
    )

    def __init__(self, event: RunScheduled) -> None:
        self.run_id = event.run_id
        self.kind = event.kind
        self.target = event.target
        self.name = event.name
        self.trigger = event.trigger
        self.context = dict(event.context)
        self.params = event.params  # schedule-time overrides: tasks added later get them too
        self.scheduled_at = event.ts
        self.ended_at: dt.datetime | None = None
        self.status: RunStatus = RUN_RUNNING
        self.cancel_requested = False
        self.cancel_reason = ""
        self.tasks: dict[str, TaskRun] = {}
        self.dependents: dict[str, list[str]] = {}
        self.failed_tasks: list[str] = []
        self.open_tasks = 0  # tasks not yet in a TASK_DONE status
        # Work sets (dicts as insertion-ordered sets, so decisions come out in a stable order).
        self.ready: dict[str, None] = {}  # pending, every dependency succeeded
        self.blocked: dict[str, str] = {}  # pending, an upstream failed: task -> that upstream
        self.queued: dict[str, None] = {}
        self.failing: dict[str, str] = {}  # attempt failed, retry not yet scheduled -> reason
        self.retry_wait: dict[str, None] = {}
        self.evaluating: dict[str, None] = {}
        self.deadlines: dict[str, dt.datetime] = {}  # running tasks with a timeout
        # Attempts an agent started after they were cancelled (it could not see that yet): task
        # -> until when the run waits for its report (LATE_START_GRACE after the start).
        self.late_starts: dict[str, dt.datetime] = {}
        self._add_nodes(event.graph)

    @property
    def finished(self) -> bool:
        return self.status != RUN_RUNNING

    def _add_nodes(self, nodes: Iterable[TaskNode]) -> None:
        tasks = self.tasks
        for node in nodes:
            if node.id in tasks:
                continue
            remaining = 0
            upstream_failed = ""
            for dep in node.dependencies:
                self.dependents.setdefault(dep, []).append(node.id)
                dep_run = tasks.get(dep)
                if dep_run is None or dep_run.status != SUCCEEDED:
                    remaining += 1
                if dep_run is not None and dep_run.status in (FAILED, SKIPPED, CANCELLED):
                    upstream_failed = dep
            tasks[node.id] = TaskRun(node, remaining)
            self.open_tasks += 1
            if upstream_failed:
                self.blocked[node.id] = upstream_failed
            elif remaining == 0:
                self.ready[node.id] = None

    def snapshot(self) -> dict[str, Any]:
        """Plain data of the whole state, for equality checks and read models."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if name == "tasks":
                value = {k: t.snapshot() for k, t in value.items()}
            elif isinstance(value, dict | list):
                value = type(value)(value)
            out[name] = value
        return out


# --------------------------------------------------------------------------------------- fold


def fold(state: RunState | None, event: AnyEvent) -> RunState | None:
    """Apply one event. Returns the run's state (a new one for RunScheduled)."""
    if state is None:
        return RunState(event) if isinstance(event, RunScheduled) else None
    if state.finished:
        return state  # exactly one terminal event: nothing changes a finished run
    handler = _HANDLERS.get(type(event))
    if handler is not None:
        handler(state, event)
    return state


def _finish_task(state: RunState, task: TaskRun, status: TaskStatus, ts: dt.datetime) -> None:
    task.status = status
    task.finished_at = ts
    state.open_tasks -= 1
    state.queued.pop(task.node.id, None)
    state.deadlines.pop(task.node.id, None)
    if status == SUCCEEDED:
        tasks = state.tasks
        for dep_id in state.dependents.get(task.node.id, ()):
            dependent = tasks[dep_id]
            dependent.remaining -= 1
            ready = dependent.remaining == 0 and dependent.status == PENDING
            if ready and dep_id not in state.blocked:
                state.ready[dep_id] = None
    else:
        if status == FAILED:
            state.failed_tasks.append(task.node.id)
        for dep_id in state.dependents.get(task.node.id, ()):
            if state.tasks[dep_id].status == PENDING and dep_id not in state.blocked:
                state.blocked[dep_id] = task.node.id
                state.ready.pop(dep_id, None)


def _on_queued(state: RunState, e: TaskQueued) -> None:
    _queue(state, e.task_id, e.attempt, e.ts)


def _on_tasks_queued(state: RunState, e: TasksQueued) -> None:
    for t in e.tasks:
        _queue(state, t.task_id, t.attempt, e.ts)


def _queue(state: RunState, task_id: str, attempt: int, ts: dt.datetime) -> None:
    """Attempt `attempt` of `task_id` is queued, if it is the one the task waits for (a
    duplicate, or an attempt decided twice, changes nothing)."""
    task = state.tasks.get(task_id)
    if task is None:
        return
    if task.status == PENDING and attempt == 1 and task_id in state.ready:
        del state.ready[task_id]
    elif task.status == UP_FOR_RETRY and attempt == task.attempt and task_id in state.retry_wait:
        del state.retry_wait[task_id]
    else:
        return
    task.status = QUEUED
    task.attempt = attempt
    task.queued_at = ts
    task.not_before = None
    state.queued[task_id] = None


def _queued_implicitly(state: RunState, e: TaskEvent) -> None:
    """An agent's word on an attempt whose TasksQueued is not in the log yet means it was queued.

    Only the orchestrator dispatches, and only after folding its TasksQueued, so a result for the
    next attempt of a task that is ready (or waiting for its retry) proves that decision. Its
    append can still land after the agent's events when it had to be retried (NATS away for a
    moment); without this, a replay would ignore the results and see the attempt queued forever,
    while the live orchestrator had moved on."""
    task = state.tasks.get(e.task_id)
    if task is None or task.status not in (PENDING, UP_FOR_RETRY):
        return
    if (task.status == PENDING and e.attempt == 1 and e.task_id in state.ready) or (
        e.attempt == task.attempt and e.task_id in state.retry_wait
    ):
        _queue(state, e.task_id, e.attempt, e.ts)


def _settle_late_start(state: RunState, e: TaskEvent) -> None:
    """A result of a late-started attempt (see RunState.late_starts): its command is over."""
    task = state.tasks.get(e.task_id)
    if task is not None and e.attempt == task.attempt:
        state.late_starts.pop(e.task_id, None)


def _on_started(state: RunState, e: TaskStarted) -> None:
    _queued_implicitly(state, e)
    task = state.tasks.get(e.task_id)
    if task is None or e.attempt != task.attempt:
        return
    if task.status == CANCELLED:
        # Cancelled while queued, or a redelivery of an attempt its agent cancelled: the start
        # landed after the cancellation, so a command runs that the run must wait for.
        state.late_starts[e.task_id] = e.ts + LATE_START_GRACE
        return
    if task.status == QUEUED:
        task.status = RUNNING
        task.started_at = e.ts
        state.queued.pop(e.task_id, None)
        timeout = task.node.timeout_seconds
        if timeout is not None:
            state.deadlines[e.task_id] = e.ts + dt.timedelta(seconds=timeout) + TIMEOUT_GRACE
    elif task.status != RUNNING or e.delivery <= task.delivery:
        return
    # A redelivery to another agent (the first one vanished) moves the task there.
    task.agent_id = e.agent_id
    task.delivery = e.delivery


def _on_succeeded(state: RunState, e: TaskSucceeded) -> None:
    _queued_implicitly(state, e)
    _settle_late_start(state, e)
    task = state.tasks.get(e.task_id)
    if task is None or e.attempt != task.attempt or task.status not in (QUEUED, RUNNING):
        return
    task.exit_code = e.exit_code
    if e.agent_id:
        task.agent_id = e.agent_id
    if task.node.evaluation_point and e.evaluation is not None:
        # The run grows before the evaluation point counts as done (see decide).
        task.status = EVALUATING
        task.evaluation = e.evaluation
        task.finished_at = e.ts
        state.queued.pop(e.task_id, None)
        state.deadlines.pop(e.task_id, None)
        state.evaluating[e.task_id] = None
        return
    _finish_task(state, task, SUCCEEDED, e.ts)


def _on_failed(state: RunState, e: TaskFailed | TaskLost) -> None:
    _queued_implicitly(state, e)
    _settle_late_start(state, e)
    task = state.tasks.get(e.task_id)
    if task is None or e.attempt != task.attempt:
        return
    if task.status not in (QUEUED, RUNNING):
        # An evaluation point's attempt already succeeded; only the orchestrator's verdict on
        # its evaluation can still fail it (a second agent's result is a late duplicate).
        invalid = isinstance(e, TaskFailed) and e.reason == "invalid_evaluation"
        if not (task.status == EVALUATING and invalid):
            return
    state.evaluating.pop(e.task_id, None)
    if isinstance(e, TaskFailed):
        task.reason, task.exit_code, task.message = e.reason, e.exit_code, e.message
        if e.agent_id:
            task.agent_id = e.agent_id
    else:
        task.reason, task.message = "lost", e.message
    retryable = task.reason != "invalid_evaluation" and not state.cancel_requested
    if retryable and task.attempt <= task.node.retries.count:
        task.status = UP_FOR_RETRY
        task.finished_at = e.ts
        state.queued.pop(e.task_id, None)
        state.deadlines.pop(e.task_id, None)
        state.failing[e.task_id] = task.reason
        return
    _finish_task(state, task, FAILED, e.ts)


def _on_retry_scheduled(state: RunState, e: TaskRetryScheduled) -> None:
    task = state.tasks.get(e.task_id)
    if task is None or task.status != UP_FOR_RETRY or e.task_id not in state.failing:
        return
    if e.attempt != task.attempt + 1:
        return
    del state.failing[e.task_id]
    task.attempt = e.attempt
    task.not_before = e.not_before
    state.retry_wait[e.task_id] = None


def _on_skipped(state: RunState, e: TaskSkipped) -> None:
    task = state.tasks.get(e.task_id)
    if task is None or task.status != PENDING:
        return
    state.ready.pop(e.task_id, None)
    state.blocked.pop(e.task_id, None)
    task.reason = e.reason
    _finish_task(state, task, SKIPPED, e.ts)


def _on_cancelled(state: RunState, e: TaskCancelled) -> None:
    _queued_implicitly(state, e)
    _settle_late_start(state, e)
    task = state.tasks.get(e.task_id)
    if task is None or e.attempt != task.attempt:
        return
    if task.status not in (QUEUED, RUNNING, UP_FOR_RETRY):
        return
    state.failing.pop(e.task_id, None)
    state.retry_wait.pop(e.task_id, None)
    task.reason = "cancelled"
    _finish_task(state, task, CANCELLED, e.ts)


def _on_graph_extended(state: RunState, e: GraphExtended) -> None:
    task = state.tasks.get(e.task_id)
    if task is None or task.status != EVALUATING or e.attempt != task.attempt:
        return
    del state.evaluating[e.task_id]
    state.context.update(e.context_updates)
    state._add_nodes(e.nodes)
    _finish_task(state, task, SUCCEEDED, e.ts)


def _on_cancel_requested(state: RunState, e: RunCancelRequested) -> None:
    if not state.cancel_requested:
        state.cancel_requested = True
        state.cancel_reason = e.reason


def _on_run_end(state: RunState, e: RunSucceeded | RunFailed | RunCancelled) -> None:
    state.status = {
        RunSucceeded: RUN_SUCCEEDED,
        RunFailed: RUN_FAILED,
        RunCancelled: RUN_CANCELLED,
    }[type(e)]
    state.ended_at = e.ts


_HANDLERS: dict[type, Callable[[RunState, Any], None]] = {
    TaskQueued: _on_queued,
    TasksQueued: _on_tasks_queued,
    TaskStarted: _on_started,
    TaskSucceeded: _on_succeeded,
    TaskFailed: _on_failed,
    TaskLost: _on_failed,
    TaskRetryScheduled: _on_retry_scheduled,
    TaskSkipped: _on_skipped,
    TaskCancelled: _on_cancelled,
    GraphExtended: _on_graph_extended,
    RunCancelRequested: _on_cancel_requested,
    RunSucceeded: _on_run_end,
    RunFailed: _on_run_end,
    RunCancelled: _on_run_end,
}


# ------------------------------------------------------------------------------------- decide


def decide(
    state: RunState, now: dt.datetime, extend: Extender | None = None, *, racing: bool = True
) -> list[AnyEvent]:
    """The events that should be appended next, given the state at `now`. Pure.

    Apply them with `fold` and call again until it returns nothing (see `advance`): a decision
    can enable another (a skip blocks the next task down, an extension adds ready tasks).

    Most decisions concern tasks no agent is touching, so they commute with events the
    orchestrator has not received yet and may be folded eagerly. Decisions about attempts an
    agent may hold (cancelling a queued attempt, failing a silent one) race with that agent's own
    events, and so does the run's end (nothing may follow it); they are made only with
    `racing=True`, which the caller passes when it has seen the run's whole log (its own appends
    included) and appends them conditionally (expected last subject sequence).
    """
    if state.finished:
        return []
    run_id = state.run_id
    tasks = state.tasks
    out: list[AnyEvent] = []

    for task_id in state.evaluating:
        task = tasks[task_id]
        assert task.evaluation is not None
        try:
            overrides = overrides_from(f"{k}={v}" for k, v in state.params.items())
            nodes = extend(_nodes(state), task_id, task.evaluation, overrides) if extend else ()
            if not extend and task.evaluation.next_tasks:
                raise ValueError("no definitions available to extend the graph")
        except Exception as exc:  # noqa: BLE001 - any resolution error fails the evaluation point
            message = f"evaluation point {task_id!r}: {exc}"
            out.append(_verdict(state, task_id, now, "invalid_evaluation", message))
            continue
        out.append(
            GraphExtended(
                run_id=run_id,
                ts=now,
                task_id=task_id,
                attempt=task.attempt,
                nodes=nodes,
                context_updates=dict(task.evaluation.context_updates),
            )
        )

    for task_id, reason in state.failing.items():
        task = tasks[task_id]
        attempt = task.attempt + 1
        delay = task.node.retries.delay_before(attempt)
        out.append(
            TaskRetryScheduled(
                run_id=run_id,
                ts=now,
                task_id=task_id,
                attempt=attempt,
                not_before=now + dt.timedelta(seconds=delay),
                previous_reason=reason,
            )
        )

    for task_id, upstream in state.blocked.items():
        out.append(
            TaskSkipped(
                run_id=run_id,
                ts=now,
                task_id=task_id,
                attempt=tasks[task_id].attempt,
                reason="upstream_failed",
                upstream=upstream,
            )
        )

    if state.cancel_requested:
        for task_id in state.ready:
            out.append(
                TaskSkipped(run_id=run_id, ts=now, task_id=task_id, attempt=0, reason="cancelled")
            )
        # An agent may already hold a queued attempt: its late events are fenced out.
        for task_id in (*state.queued, *state.retry_wait) if racing else state.retry_wait:
            out.append(
                TaskCancelled(
                    run_id=run_id, ts=now, task_id=task_id, attempt=tasks[task_id].attempt
                )
            )
    else:
        due = [QueuedTask(task_id=t, attempt=1, queue=tasks[t].node.queue) for t in state.ready]
        for task_id in state.retry_wait:
            task = tasks[task_id]
            if task.not_before is None or task.not_before <= now:
                due.append(QueuedTask(task_id=task_id, attempt=task.attempt, queue=task.node.queue))
        for i in range(0, len(due), QUEUED_PER_EVENT):
            chunk = tuple(due[i : i + QUEUED_PER_EVENT])
            out.append(TasksQueued(run_id=run_id, ts=now, tasks=chunk))

    for task_id, deadline in state.deadlines.items() if racing else ():
        if deadline <= now:
            task = tasks[task_id]
            message = (
                f"no result within timeout_seconds={task.node.timeout_seconds} plus "
                f"{int(TIMEOUT_GRACE.total_seconds())} s from agent {task.agent_id!r}"
            )
            out.append(_verdict(state, task_id, now, "timeout", message))

    late = any(until > now for until in state.late_starts.values())
    if racing and not out and state.open_tasks == 0 and not late:
        # The end is appended only when nothing came since the state it was judged on, so
        # nothing lands after it: no start that a cancellation's other events hid from its
        # agent (a late start keeps the run open instead, see late_starts), and none of the
        # orchestrator's own decisions still being retried (it waits for those first).
        if state.cancel_requested:
            out.append(RunCancelled(run_id=run_id, ts=now, reason=state.cancel_reason))
        elif state.failed_tasks:
            failed = tuple(state.failed_tasks)
            out.append(
                RunFailed(
                    run_id=run_id,
                    ts=now,
                    failed_tasks=failed,
                    reason=f"{len(failed)} task(s) failed: {', '.join(failed[:5])}",
                )
            )
        else:
            out.append(RunSucceeded(run_id=run_id, ts=now))
    return out


def _verdict(
    state: RunState, task_id: str, now: dt.datetime, reason: FailureReason, message: str
) -> TaskFailed:
    """A failure the orchestrator itself pronounces on the current attempt of a task."""
    return TaskFailed(
        run_id=state.run_id,
        ts=now,
        task_id=task_id,
        attempt=state.tasks[task_id].attempt,
        reason=reason,
        agent_id="orchestrator",
        message=message,
    )


def advance(
    state: RunState, now: dt.datetime, extend: Extender | None = None, *, racing: bool = True
) -> list[AnyEvent]:
    """Decide and fold until nothing more is to be done now; returns every decision made."""
    made: list[AnyEvent] = []
    while True:
        events = decide(state, now, extend, racing=racing)
        if not events:
            return made
        for event in events:
            fold(state, event)
        made.extend(events)


def is_racing(event: AnyEvent) -> bool:
    """A decision that races with agents' events (see `decide`): append it conditionally."""
    return isinstance(event, TaskCancelled | RunSucceeded | RunFailed | RunCancelled) or (
        isinstance(event, TaskFailed) and event.reason == "timeout"
    )


def next_wakeup(state: RunState) -> dt.datetime | None:
    """When `decide` will have something to do without a new event (retry backoff, deadlines)."""
    if state.finished:
        return None
    times = [t for t in (state.tasks[i].not_before for i in state.retry_wait) if t is not None]
    times.extend(state.deadlines.values())
    times.extend(state.late_starts.values())
    return min(times, default=None)


def dispatch_for(state: RunState, task_id: str) -> Dispatch:
    """The work message for a task's current (queued) attempt: context under its parameters."""
    task = state.tasks[task_id]
    node, attempt = task.node, task.attempt
    return Dispatch(
        run_id=state.run_id,
        task_id=node.id,
        attempt=attempt,
        queue=node.queue,
        command=node.command,
        env=task_environment(state.context, node, run_id=state.run_id, attempt=attempt),
        timeout_seconds=node.timeout_seconds,
        evaluation_point=node.evaluation_point,
    )


def _nodes(state: RunState) -> dict[str, TaskNode]:
    return {task_id: task.node for task_id, task in state.tasks.items()}


def replay(events: Iterable[AnyEvent]) -> dict[str, RunState]:
    """Fold a log of many runs; returns the state of every run seen."""
    runs: dict[str, RunState] = {}
    for event in events:
        state = fold(runs.get(event.run_id), event)
        if state is not None:
            runs[event.run_id] = state
    return runs


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The typed view of a run: its status and every task's status."""

    run_id: str
    status: RunStatus
    tasks: dict[str, TaskStatus]


def run_summary(state: RunState) -> RunSummary:
    """The view of a run that `runs show --json` prints.

    While a run is open its status is `scheduled` until a task is queued, then `running`.
    """
    status = state.status
    if status == RUN_RUNNING and all(t.status == PENDING for t in state.tasks.values()):
        status = RUN_SCHEDULED
    return RunSummary(
        run_id=state.run_id,
        status=status,
        tasks={task_id: task.status for task_id, task in state.tasks.items()},
    )


def summary(state: RunState) -> dict[str, Any]:
    """`run_summary` as plain data (`--json` of `schedule --wait` and `runs show`): strings only,
    so the printed JSON stays exactly what it was before statuses were enums."""
    out: dict[str, Any] = msgspec.to_builtins(run_summary(state))
    return out
