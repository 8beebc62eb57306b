"""Writes: start a run of a task (an outcome) or a DAG, cancel a run, rerun one. Each goes
through `services.commands` exactly as the CLI's `schedule`, `runs cancel` and `runs rerun` do
(the same validation, the same events), then waits a little for the read model to show it, so
the GET that follows sees the write."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from core.definitions import Definitions, env_value
from core.errors import Invalid
from services import commands
from services.commands import ScheduleRequest
from web.api.common import requester, visible
from web.auth import OPERATOR
from web.context import UiContext
from web.errors import FieldInvalid

Scalar = str | int | float | bool


class ScheduleBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Give `task` (make that task happen, its prerequisites join by themselves) or `dag`.
    `parameters`: `KEY` for every task, `TASK.KEY` for one (as `--param`)."""

    task: str | None = None
    dag: str | None = None
    context: str | None = None
    parameters: dict[str, Scalar] = {}
    run_id: str | None = None


class CancelBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: str = ""


class RerunBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`from_task`: only that task and everything downstream of it run again; `from_failure`:
    only the tasks that did not succeed (the succeeded ones' results are reused)."""

    from_task: str | None = None
    from_failure: bool = False
    run_id: str | None = None  # the new run's id (default: a fresh one)


class Written(msgspec.Struct, kw_only=True):
    """A write stored in the event log at `seq`; `visible`: the read model already shows it."""

    run_id: str
    seq: int
    status: Literal["scheduled", "cancel_requested"]
    tasks: int | None = None
    visible: bool


def request_of(body: ScheduleBody) -> ScheduleRequest:
    if (body.task is None) == (body.dag is None):
        raise FieldInvalid("task", "give either task (an outcome) or dag, not both or neither")
    return ScheduleRequest(
        kind="outcome" if body.task is not None else "dag",
        target=body.task if body.task is not None else str(body.dag),
        context=body.context,
        params=tuple(f"{key}={env_value(value)}" for key, value in body.parameters.items()),
        run_id=body.run_id,
        trigger="api",
    )


def blame(defs: Definitions, request: ScheduleRequest, exc: Invalid) -> Invalid:
    """Which field of the request makes planning fail: plan with one more field at a time (the
    one planning code path, no second validation) and name the first that breaks it."""
    if not (defs.tasks or defs.dags):
        return exc
    target = "task" if request.kind == "outcome" else "dag"
    stages = (
        (target, ScheduleRequest(kind=request.kind, target=request.target, trigger="api")),
        ("context", msgspec.structs.replace(request, params=(), run_id=None)),
        ("parameters", msgspec.structs.replace(request, run_id=None)),
        ("run_id", request),
    )
    for field, partial in stages:
        try:
            commands.plan(defs, partial)
        except Invalid as failed:
            return FieldInvalid(field, str(failed))
    return exc


@post("/runs", summary="Start a run of a task (outcome) or a DAG", opt=OPERATOR)
async def schedule_run(
    data: JSONBody[ScheduleBody], ui: NamedDependency[UiContext], request: Request[Any, Any, Any]
) -> Written:
    """201 with the run id; 422 naming the field for an unknown task, DAG or context, a
    malformed parameter or run id; 409 when the run id is taken."""
    asked = request_of(data)
    defs = await ui.backplane.definitions.load()
    try:
        commands.plan(defs, asked, env_policy=ui.env_policy)
    except Invalid as exc:
        raise blame(defs, asked, exc) from None
    asked = msgspec.structs.replace(asked, requested_by=requester(request))
    written = await commands.schedule(ui.backplane.events, defs, asked, env_policy=ui.env_policy)
    return await _written(ui, written)


@post("/runs/{run_id:str}/cancel", summary="Cancel a run", status_code=202, opt=OPERATOR)
async def cancel_run(
    run_id: FromPath[str],
    ui: NamedDependency[UiContext],
    request: Request[Any, Any, Any],
    data: JSONBody[CancelBody | None] = None,
) -> Written:
    """202: the orchestrator skips waiting tasks and kills running ones; 404 for an unknown
    run, 409 for one that already ended."""
    reason = data.reason if data is not None else ""
    done = await commands.cancel(
        ui.backplane.events, run_id, reason=reason, by="api", requested_by=requester(request)
    )
    return Written(
        run_id=run_id, seq=done.seq, status="cancel_requested", visible=await visible(ui, done.seq)
    )


@post(
    "/runs/{run_id:str}/rerun",
    summary="A new run from a run's own graph snapshot",
    opt=OPERATOR,
)
async def rerun_run(
    run_id: FromPath[str],
    ui: NamedDependency[UiContext],
    request: Request[Any, Any, Any],
    data: JSONBody[RerunBody | None] = None,
) -> Written:
    """201 with the new run's id; with `from_task`, that task and its dependents only; with
    `from_failure`, the tasks that did not succeed."""
    body = data or RerunBody()
    scheduled = await commands.rerun(
        ui.backplane.events,
        run_id,
        from_task=body.from_task,
        from_failure=body.from_failure,
        run_as=body.run_id,
        requested_by=requester(request),
    )
    return await _written(ui, scheduled)


async def _written(ui: UiContext, scheduled: commands.Scheduled) -> Written:
    return Written(
        run_id=scheduled.run_id,
        seq=scheduled.seq,
        status="scheduled",
        tasks=scheduled.tasks,
        visible=await visible(ui, scheduled.seq),
    )


handlers = [schedule_run, cancel_run, rerun_run]
