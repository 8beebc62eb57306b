"""What a person or a system can ask Cyclonetix to do: schedule, cancel, rerun, look at a run.

One layer for every entry point — the CLI today, the HTTP API, subject triggers and cron next —
so they validate the same way, write the same events and fail with the same typed errors
(`core.errors`: Invalid, NotFound, Conflict, Unavailable), each mapped once to an exit code or an
HTTP status by its caller. Functions take only the ports they use.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
from typing import TYPE_CHECKING, Literal

import msgspec

from core.definitions import Definitions
from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy
from core.errors import Conflict, Invalid, NotFound
from core.events import RunCancelRequested, RunScheduled
from core.ids import check_run_id, new_run_id
from core.rerun import UnknownTask, rerun_graph
from core.run import RunState, fold
from core.scheduling import plan_run

if TYPE_CHECKING:
    from services.ports import DefinitionsStore, EventLog

Kind = Literal["outcome", "dag"]


class ScheduleRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A request to start a run, as every entry point receives it."""

    kind: Kind
    target: str  # task id (or task:set) for an outcome, DAG id for a DAG
    context: str | None = None
    params: tuple[str, ...] = ()  # `KEY=VALUE` or `TASK.KEY=VALUE`
    run_id: str | None = None
    trigger: str = "cli"
    idempotency_key: str | None = None
    logical_time: dt.datetime | None = None  # what `${DATE}` and the like stand for (a slot)
    requested_by: str | None = None  # who asks (RunScheduled.requested_by)


class Scheduled(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    seq: int  # stream sequence of its RunScheduled
    tasks: int
    event: RunScheduled


class CancelRequested(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    seq: int


def plan(
    defs: Definitions,
    request: ScheduleRequest,
    *,
    now: dt.datetime | None = None,
    entropy: bytes | None = None,
    env_policy: EnvPolicy = DEFAULT_ENV_POLICY,
) -> RunScheduled:
    """The RunScheduled a request would append (no I/O): raises Invalid with one line.

    `env_policy`: the environment variables no parameter override may set."""
    if not (defs.tasks or defs.dags):
        raise Invalid(
            "no definitions published: start the orchestrator with --definitions DIR, "
            "or pass --definitions DIR here"
        )
    try:
        planned = plan_run(
            defs,
            kind=request.kind,
            target=request.target,
            now=now or dt.datetime.now(dt.UTC),
            entropy=entropy or os.urandom(16),
            context_id=request.context,
            params=request.params,
            run_id=request.run_id,
            trigger=request.trigger,
            idempotency_key=request.idempotency_key,
            logical_time=request.logical_time,
            env_policy=env_policy,
        )
    except Invalid:
        raise
    except ValueError as exc:  # e.g. a malformed run id
        raise Invalid(str(exc)) from None
    if request.requested_by is None:
        return planned
    return msgspec.structs.replace(planned, requested_by=request.requested_by)


async def schedule(
    events: EventLog,
    definitions: DefinitionsStore | Definitions,
    request: ScheduleRequest,
    *,
    env_policy: EnvPolicy = DEFAULT_ENV_POLICY,
) -> Scheduled:
    """Plan a run against the given (or the published) definitions and append it.

    Raises Invalid (bad request), Conflict (`RunExists`: the run id is taken), Unavailable.
    """
    defs = definitions if isinstance(definitions, Definitions) else await definitions.load()
    event = plan(defs, request, env_policy=env_policy)
    seq = await events.schedule_run(event)
    return Scheduled(run_id=event.run_id, seq=seq, tasks=len(event.graph), event=event)


async def load_run(events: EventLog, run_id: str) -> RunState:
    """A run's current state, folded from its history; NotFound when it has none."""
    state: RunState | None = None
    for _seq, event in await events.history(run_id):
        state = fold(state, event)
    if state is None:
        raise NotFound(f"no run {run_id!r}")
    return state


async def cancel(
    events: EventLog,
    run_id: str,
    *,
    reason: str = "",
    by: str = "",
    requested_by: str | None = None,
) -> CancelRequested:
    """Ask the orchestrator to cancel a run: waiting tasks are skipped, queued ones cancelled,
    running commands killed. NotFound for an unknown run, Conflict when it already ended.
    `by`: the channel ("api", "cli"); `requested_by`: who (RunScheduled.requested_by)."""
    state = await load_run(events, run_id)
    if state.finished:
        raise Conflict(f"run {run_id!r} already ended {state.status}")
    seq = await events.append(
        RunCancelRequested(
            run_id=run_id,
            ts=dt.datetime.now(dt.UTC),
            reason=reason,
            by=by,
            requested_by=requested_by,
        )
    )
    return CancelRequested(run_id=run_id, seq=seq)


async def rerun(
    events: EventLog,
    run_id: str,
    *,
    from_task: str | None = None,
    from_failure: bool = False,
    run_as: str | None = None,
    trigger: str = "rerun",
    requested_by: str | None = None,
) -> Scheduled:
    """Start a new run from an earlier run's own graph snapshot (not today's definitions: a
    rerun repeats what ran), linked to it by `rerun_of`; `core.rerun` says why a rerun is a new
    run and not new attempts in the old one. The whole run by default; with `from_task`, that
    task and everything downstream of it; with `from_failure`, every task that did not succeed,
    reusing the results (the context, carried over) of those that did. Dependencies outside
    what runs again count as done. The earlier run may still be open.

    NotFound for an unknown run or task; Invalid for a bad run id, both options at once, or a
    rerun from failure of a run whose tasks all succeeded; Conflict if the run id is taken.
    """
    history = await events.history(run_id)
    if not history:
        raise NotFound(f"no run {run_id!r}")
    first = history[0][1]
    if not isinstance(first, RunScheduled):
        raise NotFound(f"run {run_id!r} has no RunScheduled event")
    state: RunState | None = None
    for _seq, event in history:
        state = fold(state, event)
    assert state is not None  # (its first event is a RunScheduled)
    try:
        graph = rerun_graph(state, from_task=from_task, from_failure=from_failure)
    except UnknownTask as exc:
        raise NotFound(str(exc)) from None
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    now = dt.datetime.now(dt.UTC)
    entropy = os.urandom(16)
    if run_as is None:
        new_id = new_run_id(first.target, int(now.timestamp() * 1000), entropy)
    else:
        try:
            new_id = check_run_id(run_as)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    scheduled = msgspec.structs.replace(
        first,
        run_id=new_id,
        ts=now,
        graph=graph,
        context=dict(state.context),  # with what evaluation points added
        trigger=trigger,
        idempotency_key=None,
        rerun_of=run_id,
        requested_by=requested_by,  # who reruns it, not who asked for the earlier run
    )
    seq = await events.schedule_run(scheduled)
    return Scheduled(run_id=new_id, seq=seq, tasks=len(scheduled.graph), event=scheduled)


def cli_requester() -> str:
    """`requested_by` of a command given on this machine's CLI: `cli:<OS login>` (the login
    name as the operating system reports it; `cli:unknown` when it cannot tell)."""
    try:
        login = getpass.getuser()
    except (OSError, KeyError):  # no LOGNAME/USER and no passwd entry for this uid
        login = "unknown"
    return f"cli:{login or 'unknown'}"
