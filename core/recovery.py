"""Snapshots of open runs' states: what lets a restarted orchestrator skip most of the log.

A snapshot is a cache of `fold`, never a source of truth. Each run in it is the state of that run
as of a known position in the log (`last_seq`: the sequence of the run's last event folded into
it), and `replay_from` says where the log must be read again from. Restoring the runs and folding
every later event (events of a snapshotted run up to its `last_seq` are skipped, other runs are
folded from their first event as usual) gives exactly the states a full replay gives;
`tests/unit/core/test_recovery_properties.py` checks that over random runs and interleavings.

The encoding is a stored type (see `core.snapshots`): it accepts fields it does not know and
records every value. Unlike an event it also carries a `version`: it stores what `fold` *derived*,
so it is only valid for code that derives the same. Change `SNAPSHOT_VERSION` whenever `RunState`
or `TaskRun` gain, lose or change what a field means, or `fold` would derive a different state
from the same events. A snapshot of another version, or one that does not decode or does not hold
together, is refused (`UnreadableSnapshot`): the caller replays the log instead, which is always
correct, only slower.

Not recorded, because they follow from what is: `RunState.dependents` (rebuilt from the nodes in
the order they joined the run), `RunState.open_tasks` and `TaskRun.remaining`.

Stored as JSON compressed with zlib (level 1): a snapshot repeats every task's node, so it shrinks
about fortyfold (1,000 runs of 32 tasks: 16.7 MB of JSON, 0.36 MB stored), which makes it quicker
to store and to read than to compress. `decode_snapshot` also takes the plain JSON.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from core.events import EvaluationResult
from core.run import SUCCEEDED, TASK_DONE, RunState, RunStatus, TaskRun, TaskStatus
from core.snapshots import TaskNode

__all__ = [
    "DERIVED_RUN_FIELDS",
    "DERIVED_TASK_FIELDS",
    "SNAPSHOT_VERSION",
    "RunSnapshot",
    "StateSnapshot",
    "TaskSnapshot",
    "UnreadableSnapshot",
    "decode_snapshot",
    "encode_run",
    "encode_snapshot",
    "restore",
    "restore_run",
    "snapshot_run",
]

SNAPSHOT_VERSION: Final = 1

# What a snapshot does not record because restoring recomputes it (see the module docstring).
DERIVED_RUN_FIELDS: Final = frozenset({"dependents", "open_tasks"})
DERIVED_TASK_FIELDS: Final = frozenset({"remaining"})


class UnreadableSnapshot(ValueError):
    """A snapshot this code cannot use: another version, corrupt, or inconsistent."""


class TaskSnapshot(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One `TaskRun`, every field but `remaining`."""

    node: TaskNode
    status: TaskStatus
    attempt: int
    not_before: dt.datetime | None
    agent_id: str
    delivery: int
    queued_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    exit_code: int | None
    reason: str
    message: str
    evaluation: EvaluationResult | None


class RunSnapshot(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One `RunState` as of `last_seq`, with where its history starts (`first_seq`).

    Work sets keep their order (decisions come out in the same order as before a restart).
    """

    run_id: str
    first_seq: int  # the sequence of its RunScheduled
    last_seq: int  # the sequence of its last event folded into this state
    kind: Literal["outcome", "dag"]
    target: str
    name: str
    trigger: str
    context: dict[str, str]
    params: dict[str, str]
    scheduled_at: dt.datetime
    ended_at: dt.datetime | None
    status: RunStatus
    cancel_requested: bool
    cancel_reason: str
    tasks: tuple[TaskSnapshot, ...]  # in the order they joined the run
    failed_tasks: tuple[str, ...]
    ready: tuple[str, ...]
    blocked: dict[str, str]
    queued: tuple[str, ...]
    failing: dict[str, str]
    retry_wait: tuple[str, ...]
    evaluating: tuple[str, ...]
    deadlines: dict[str, dt.datetime]
    late_starts: dict[str, dt.datetime] = {}  # (absent in snapshots from before it)


class StateSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Every open run an orchestrator held, and where the log must be read again from.

    Every run open when the snapshot was taken is either in `runs` or has its first event at or
    after `replay_from`.
    """

    version: int
    taken_at: dt.datetime
    replay_from: int
    runs: tuple[RunSnapshot, ...]


class _Written(msgspec.Struct, frozen=True, kw_only=True):
    """`StateSnapshot` as written: runs already encoded (an orchestrator re-encodes only the runs
    that changed since its previous snapshot). Same fields, same order."""

    version: int
    taken_at: dt.datetime
    replay_from: int
    runs: list[msgspec.Raw]


class _Version(msgspec.Struct, frozen=True):
    version: int


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(StateSnapshot)
_version_decoder = msgspec.json.Decoder(_Version)


# ------------------------------------------------------------------------------ taking one


def snapshot_run(state: RunState, *, first_seq: int, last_seq: int) -> RunSnapshot:
    """`state` as a stored snapshot; it must be exactly the fold of the run's events up to
    `last_seq` (no decision folded ahead of the log)."""
    return RunSnapshot(
        run_id=state.run_id,
        first_seq=first_seq,
        last_seq=last_seq,
        kind=state.kind,
        target=state.target,
        name=state.name,
        trigger=state.trigger,
        context=dict(state.context),
        params=dict(state.params),
        scheduled_at=state.scheduled_at,
        ended_at=state.ended_at,
        status=state.status,
        cancel_requested=state.cancel_requested,
        cancel_reason=state.cancel_reason,
        tasks=tuple(
            TaskSnapshot(
                node=t.node,
                status=t.status,
                attempt=t.attempt,
                not_before=t.not_before,
                agent_id=t.agent_id,
                delivery=t.delivery,
                queued_at=t.queued_at,
                started_at=t.started_at,
                finished_at=t.finished_at,
                exit_code=t.exit_code,
                reason=t.reason,
                message=t.message,
                evaluation=t.evaluation,
            )
            for t in state.tasks.values()
        ),
        failed_tasks=tuple(state.failed_tasks),
        ready=tuple(state.ready),
        blocked=dict(state.blocked),
        queued=tuple(state.queued),
        failing=dict(state.failing),
        retry_wait=tuple(state.retry_wait),
        evaluating=tuple(state.evaluating),
        deadlines=dict(state.deadlines),
        late_starts=dict(state.late_starts),
    )


def encode_run(run: RunSnapshot) -> bytes:
    return _encoder.encode(run)


def encode_snapshot(*, taken_at: dt.datetime, replay_from: int, runs: Iterable[bytes]) -> bytes:
    """A whole snapshot, as stored, from runs encoded by `encode_run`. Pure and slow enough for
    a large snapshot (tens of ms) that a caller may want to run it in a thread (zlib releases
    the GIL while it compresses)."""
    document = _encoder.encode(
        _Written(
            version=SNAPSHOT_VERSION,
            taken_at=taken_at,
            replay_from=replay_from,
            runs=[msgspec.Raw(run) for run in runs],
        )
    )
    return zlib.compress(document, 1)


# ------------------------------------------------------------------------------ reading one


def decode_snapshot(data: bytes) -> StateSnapshot:
    """Decode a stored snapshot (or its plain JSON); UnreadableSnapshot (with a one-line reason)
    when it cannot be used."""
    if data[:64].lstrip()[:1] != b"{":
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise UnreadableSnapshot(f"not a snapshot: {exc}") from None
    try:
        version = _version_decoder.decode(data).version
    except msgspec.DecodeError as exc:
        raise UnreadableSnapshot(f"not a snapshot: {exc}") from None
    if version != SNAPSHOT_VERSION:
        raise UnreadableSnapshot(
            f"snapshot version {version}, this code reads version {SNAPSHOT_VERSION}"
        )
    try:
        snapshot = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise UnreadableSnapshot(f"snapshot does not decode: {exc}") from None
    if snapshot.replay_from < 1:
        raise UnreadableSnapshot(f"replay_from {snapshot.replay_from} is not a sequence")
    return snapshot


def restore(snapshot: StateSnapshot) -> dict[str, RunState]:
    """Every run of the snapshot as a `RunState`, by run id; UnreadableSnapshot if any run does
    not hold together (then none may be used)."""
    runs: dict[str, RunState] = {}
    for run in snapshot.runs:
        if run.run_id in runs:
            raise UnreadableSnapshot(f"run {run.run_id!r} is in the snapshot twice")
        runs[run.run_id] = restore_run(run)
    return runs


def restore_run(run: RunSnapshot) -> RunState:
    """The `RunState` a snapshot was taken of (equal in every field, in the same orders)."""
    _check(run)
    state = RunState.__new__(RunState)
    state.run_id = run.run_id
    state.kind = run.kind
    state.target = run.target
    state.name = run.name
    state.trigger = run.trigger
    state.context = dict(run.context)
    state.params = dict(run.params)
    state.scheduled_at = run.scheduled_at
    state.ended_at = run.ended_at
    state.status = run.status
    state.cancel_requested = run.cancel_requested
    state.cancel_reason = run.cancel_reason
    state.tasks = {}
    state.dependents = {}
    state.open_tasks = 0
    for saved in run.tasks:
        task = TaskRun(saved.node, 0)
        task.status = saved.status
        task.attempt = saved.attempt
        task.not_before = saved.not_before
        task.agent_id = saved.agent_id
        task.delivery = saved.delivery
        task.queued_at = saved.queued_at
        task.started_at = saved.started_at
        task.finished_at = saved.finished_at
        task.exit_code = saved.exit_code
        task.reason = saved.reason
        task.message = saved.message
        task.evaluation = saved.evaluation
        state.tasks[saved.node.id] = task
        # As RunState._add_nodes builds them: nodes in the order they joined, each dependency
        # in the node's order.
        for dep in saved.node.dependencies:
            state.dependents.setdefault(dep, []).append(saved.node.id)
        if task.status not in TASK_DONE:
            state.open_tasks += 1
    tasks = state.tasks
    for task in tasks.values():
        # A dependency's success decrements this once per listing: what is left is the number
        # of listed dependencies that have not succeeded (or are not in the run yet).
        task.remaining = sum(
            1
            for dep in task.node.dependencies
            if (dep_run := tasks.get(dep)) is None or dep_run.status != SUCCEEDED
        )
    state.failed_tasks = list(run.failed_tasks)
    state.ready = dict.fromkeys(run.ready)
    state.blocked = dict(run.blocked)
    state.queued = dict.fromkeys(run.queued)
    state.failing = dict(run.failing)
    state.retry_wait = dict.fromkeys(run.retry_wait)
    state.evaluating = dict.fromkeys(run.evaluating)
    state.deadlines = dict(run.deadlines)
    state.late_starts = dict(run.late_starts)
    return state


def _check(run: RunSnapshot) -> None:
    """Refuse a run whose parts do not refer to each other (`decide` would fail on it)."""
    where = f"run {run.run_id!r} in the snapshot"
    if not 1 <= run.first_seq <= run.last_seq:
        raise UnreadableSnapshot(f"{where}: sequences {run.first_seq}..{run.last_seq}")
    known = {t.node.id: t for t in run.tasks}
    if len(known) != len(run.tasks):
        raise UnreadableSnapshot(f"{where}: a task is listed twice")
    referenced = (
        *run.failed_tasks,
        *run.ready,
        *run.blocked,
        *run.blocked.values(),
        *run.queued,
        *run.failing,
        *run.retry_wait,
        *run.evaluating,
        *run.deadlines,
    )
    unknown = sorted({task_id for task_id in referenced if task_id not in known})
    if unknown:
        raise UnreadableSnapshot(f"{where}: unknown tasks {', '.join(unknown[:5])}")
    for task_id in run.evaluating:
        if known[task_id].evaluation is None:
            raise UnreadableSnapshot(f"{where}: {task_id!r} is evaluating without a result")
