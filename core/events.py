"""The event catalogue: every fact about a run, as one msgspec tagged union.

Events are stored as JSON (readable with `nats sub`), so every struct here, and every struct
nested in one, is a stored type (see `core.snapshots`): no `forbid_unknown_fields` (old readers
skip fields added later, at every nesting level) and no `omit_defaults` (every value is written).
Rules for evolving them: new fields get defaults, field types and defaults never change, tags are
never renamed or reused, and no input type (definitions, evaluation decisions) is ever nested in
an event. `tests/unit/core/test_event_golden.py` keeps a golden document of each.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Literal

import msgspec

from core.snapshots import TaskNode

FailureReason = Literal["exit", "timeout", "spawn_error", "killed", "lost", "invalid_evaluation"]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    run_id: str
    ts: dt.datetime


class TaskEvent(Event, frozen=True, kw_only=True):
    task_id: str
    attempt: int


class EvaluationResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an evaluation point decided, as recorded in its TaskSucceeded.

    The decision file itself is parsed by the strict input type `core.evaluation`.
    """

    next_tasks: tuple[str, ...] = ()
    parameters: dict[str, dict[str, str]] = {}  # task id -> parameter overrides
    context_updates: dict[str, str] = {}
    metadata: dict[str, object] = {}


Outcome = Literal["succeeded", "failed", "cancelled"]  # how a run ended
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed", "cancelled")


class Notification(msgspec.Struct, frozen=True, kw_only=True):
    """A completion webhook a run was scheduled with (its DAG's, or its target task's): POST a
    summary to `url` when the run ends in one of `on`, signed with the secret in the
    orchestrator's environment variable `secret_env` (None: unsigned)."""

    url: str
    on: tuple[str, ...] = OUTCOMES  # str, not Outcome: a newer writer may add outcomes
    secret_env: str | None = None


class RunScheduled(Event, frozen=True, kw_only=True):
    kind: Literal["outcome", "dag"]
    target: str  # task id (outcome) or dag id
    name: str  # display name
    graph: tuple[TaskNode, ...]  # in topological order
    context: dict[str, str] = {}  # resolved run variables
    context_id: str | None = None
    params: dict[str, str] = {}  # schedule-time overrides as given (`K` or `task.K`)
    trigger: str = "cli"
    idempotency_key: str | None = None
    rerun_of: str | None = None  # the earlier run this one reruns (core/rerun.py)
    notify: tuple[Notification, ...] = ()  # completion webhooks, as defined when scheduled
    # Who asked, when a person or a token did: `<user>` (a UI login), `token:<name>` (an API
    # token), `cli:<os login>` (the CLI). None: nobody known (an open UI, a trigger, cron).
    requested_by: str | None = None


class TaskQueued(TaskEvent, frozen=True, kw_only=True):
    queue: str


class QueuedTask(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of a TasksQueued."""

    task_id: str
    attempt: int
    queue: str


class TasksQueued(Event, frozen=True, kw_only=True):
    """Attempts the orchestrator queued in one decision (their dispatches follow): all the ready
    tasks of a run's start in one event, not one each (at most `core.run.QUEUED_PER_EVENT`).
    Each attempt means what a TaskQueued of it means; TaskQueued is still read (older logs)."""

    tasks: tuple[QueuedTask, ...]


class TaskStarted(TaskEvent, frozen=True, kw_only=True):
    agent_id: str
    host: str = ""
    pid: int = 0  # the agent's process id
    delivery: int = 1  # JetStream delivery count of the dispatch message


class TaskSucceeded(TaskEvent, frozen=True, kw_only=True):
    agent_id: str = ""
    exit_code: int = 0
    duration_ms: float = 0.0
    spawned_at: dt.datetime | None = None  # when the command process was created
    output_tail: str = ""
    evaluation: EvaluationResult | None = None


class TaskFailed(TaskEvent, frozen=True, kw_only=True):
    reason: FailureReason = "exit"
    agent_id: str = ""
    exit_code: int | None = None
    duration_ms: float = 0.0
    spawned_at: dt.datetime | None = None
    output_tail: str = ""
    message: str = ""


class TaskRetryScheduled(TaskEvent, frozen=True, kw_only=True):
    """`attempt` is the next attempt; it is not queued before `not_before`."""

    not_before: dt.datetime
    previous_reason: str = ""


class TaskSkipped(TaskEvent, frozen=True, kw_only=True):
    reason: Literal["upstream_failed", "cancelled"] = "upstream_failed"
    upstream: str = ""


class TaskLost(TaskEvent, frozen=True, kw_only=True):
    """The attempt's agent vanished beyond redelivery limits; counts as a failed attempt."""

    message: str = ""


class GraphExtended(TaskEvent, frozen=True, kw_only=True):
    """An evaluation point (`task_id`, `attempt`) added tasks to the run."""

    nodes: tuple[TaskNode, ...] = ()
    context_updates: dict[str, str] = {}


class RunCancelRequested(Event, frozen=True, kw_only=True):
    reason: str = ""
    by: str = ""  # the channel: "api", "cli"
    requested_by: str | None = None  # who asked, as RunScheduled.requested_by


class TaskCancelled(TaskEvent, frozen=True, kw_only=True):
    agent_id: str = ""


class RunSucceeded(Event, frozen=True, kw_only=True):
    pass


class RunFailed(Event, frozen=True, kw_only=True):
    reason: str = ""
    failed_tasks: tuple[str, ...] = ()


class RunCancelled(Event, frozen=True, kw_only=True):
    reason: str = ""


class NotificationEvent(Event, frozen=True, kw_only=True):
    """One attempt to deliver a run's completion webhook (`core.notify`), appended after the
    run's terminal event: a fact about the run's notifications, never about the run itself."""

    notification: int  # index in the run's RunScheduled.notify
    url: str
    outcome: str  # how the run ended: an Outcome (str: a newer writer may add one)
    attempt: int  # 1 for the first attempt
    status: int | None = None  # HTTP status of the answer; None when there was none
    duration_ms: float = 0.0


class NotificationDelivered(NotificationEvent, frozen=True, kw_only=True):
    pass


class NotificationFailed(NotificationEvent, frozen=True, kw_only=True):
    error: str = ""
    retrying: bool = False  # whether another attempt follows
    retry_at: dt.datetime | None = None  # not before then


AnyEvent = (
    RunScheduled
    | TaskQueued
    | TasksQueued
    | TaskStarted
    | TaskSucceeded
    | TaskFailed
    | TaskRetryScheduled
    | TaskSkipped
    | TaskLost
    | GraphExtended
    | RunCancelRequested
    | TaskCancelled
    | RunSucceeded
    | RunFailed
    | RunCancelled
    | NotificationDelivered
    | NotificationFailed
)
TERMINAL = (RunSucceeded, RunFailed, RunCancelled)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode(event: AnyEvent) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    return _decoder.decode(data)


def each_queued(event: AnyEvent) -> tuple[TaskQueued, ...]:
    """The attempts `event` queues, one TaskQueued each (stamped with its `ts`): a TasksQueued's,
    or a TaskQueued itself (older logs); () for any other event."""
    if isinstance(event, TasksQueued):
        run_id, ts = event.run_id, event.ts
        return tuple(
            TaskQueued(run_id=run_id, ts=ts, task_id=t.task_id, attempt=t.attempt, queue=t.queue)
            for t in event.tasks
        )
    if isinstance(event, TaskQueued):
        return (event,)
    return ()


def task_ids(event: AnyEvent) -> tuple[str, ...]:
    """The tasks `event` concerns (none for a run-level event)."""
    if isinstance(event, TaskEvent):
        return (event.task_id,)
    if isinstance(event, TasksQueued):
        return tuple(t.task_id for t in event.tasks)
    return ()


def msg_id(event: AnyEvent) -> str:
    """Deterministic message id (`Nats-Msg-Id`): a retried publish of the same fact is a no-op.

    Each delivery of a dispatch gets its own TaskStarted, so history shows redeliveries.
    """
    name = type(event).__name__
    if isinstance(event, TasksQueued):
        # The same attempts are the same fact, whenever decided; any other set is another one
        # (folding it queues only the attempts not queued yet).
        digest = hashlib.blake2b(digest_size=12)
        for t in event.tasks:
            digest.update(f"{t.task_id}\0{t.attempt}\0".encode())
        return f"{event.run_id}/{name}/{digest.hexdigest()}"
    if isinstance(event, TaskStarted):
        return f"{event.run_id}/{event.task_id}/{event.attempt}/{name}/{event.delivery}"
    if isinstance(event, TaskCancelled):
        # The orchestrator's cancellation of a queued attempt (agent "") and an agent's report of
        # killing a late start of that attempt are two facts.
        return f"{event.run_id}/{event.task_id}/{event.attempt}/{name}/{event.agent_id}"
    if isinstance(event, TaskEvent):
        return f"{event.run_id}/{event.task_id}/{event.attempt}/{name}"
    if isinstance(event, NotificationEvent):
        return f"{event.run_id}/notify/{event.notification}/{event.attempt}/{name}"
    return f"{event.run_id}/{name}"


class Dispatch(msgspec.Struct, frozen=True, kw_only=True):
    """The work message on `cx.work.<queue>`: everything an agent needs to run one attempt.

    Stored in a stream, so a stored type: lenient, every value written.

    `env` is the run's context merged with the task's parameters (DESIGN precedence); the agent
    puts its own environment underneath and the CYCLONETIX_* variables on top.
    """

    run_id: str
    task_id: str
    attempt: int
    queue: str
    command: str
    env: dict[str, str] = {}
    timeout_seconds: float | None = None
    evaluation_point: bool = False


_dispatch_decoder = msgspec.json.Decoder(Dispatch)


def encode_dispatch(d: Dispatch) -> bytes:
    return _encoder.encode(d)


def decode_dispatch(data: bytes) -> Dispatch:
    return _dispatch_decoder.decode(data)


def dispatch_msg_id(d: Dispatch) -> str:
    return f"{d.run_id}/{d.task_id}/{d.attempt}/Dispatch"
