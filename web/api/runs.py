"""Runs as the read model holds them: the list (filters, cursor pages), counts, one run, its
task runs and a task's attempts."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from core.errors import Invalid
from core.run import RunStatus
from projections.views import AttemptRow, Page, RunDetail, RunFilter, RunRow, TaskRunRow
from web.api.common import run_or_404, task_or_404
from web.context import UiContext

MAX_LIMIT = 500


def _utc(when: dt.datetime | None) -> dt.datetime | None:
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=dt.UTC)  # a time without a zone is taken as UTC


def run_filter(
    status: FromQuery[RunStatus | None] = None,
    kind: FromQuery[Literal["outcome", "dag"] | None] = None,
    dag: FromQuery[str | None] = None,
    target: FromQuery[str | None] = None,
    task: FromQuery[str | None] = None,
    trigger: FromQuery[str | None] = None,
    since: FromQuery[dt.datetime | None] = None,
    until: FromQuery[dt.datetime | None] = None,
) -> RunFilter:
    """The filter of the list and the counts, from the query (a Litestar dependency): `dag`
    is short for kind=dag&target=ID; `task` selects runs whose graph holds that task; times
    are ISO (UTC when no zone is given), `since` inclusive, `until` exclusive."""
    if dag is not None and target is not None and dag != target:
        raise Invalid("dag and target exclude each other: give one")
    if dag is not None and kind == "outcome":
        raise Invalid("dag: a dag filter selects dag runs, not kind=outcome")
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since >= until:
        raise Invalid("since must be before until")
    return RunFilter(
        status=status,
        kind="dag" if dag is not None else kind,
        target=dag if dag is not None else target,
        task=task,
        trigger=trigger,
        since=since,
        until=until,
    )


@get(
    "/runs",
    summary="Runs, newest first, filtered, a page at a time",
    dependencies={"f": Provide(run_filter, sync_to_thread=False)},
)
async def list_runs(
    ui: NamedDependency[UiContext],
    f: NamedDependency[RunFilter],
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 50,
    cursor: FromQuery[str | None] = None,
) -> Page[RunRow]:
    """`next_cursor` of a page, passed back as `cursor`, gives the next (null: the last)."""
    try:
        return await ui.read_model.list_runs(f, limit, cursor)
    except ValueError as exc:  # a cursor of no list
        raise Invalid(f"cursor: {exc}") from None


@get(
    "/runs/counts",
    summary="How many runs match the filter, per status (status itself is not a filter here)",
    dependencies={"f": Provide(run_filter, sync_to_thread=False)},
)
async def count_runs(
    ui: NamedDependency[UiContext], f: NamedDependency[RunFilter]
) -> dict[RunStatus, int]:
    return await ui.read_model.count_runs(f)


@get("/runs/{run_id:str}", summary="One run with its task runs and graph")
async def get_run(run_id: FromPath[str], ui: NamedDependency[UiContext]) -> RunDetail:
    return await run_or_404(ui, run_id)


@get("/runs/{run_id:str}/tasks", summary="The task runs of a run, in graph order")
async def run_tasks(
    run_id: FromPath[str], ui: NamedDependency[UiContext]
) -> tuple[TaskRunRow, ...]:
    return (await run_or_404(ui, run_id)).tasks


@get("/runs/{run_id:str}/tasks/{task_id:str}/attempts", summary="A task's attempts")
async def task_attempts(
    run_id: FromPath[str], task_id: FromPath[str], ui: NamedDependency[UiContext]
) -> tuple[AttemptRow, ...]:
    await task_or_404(ui, run_id, task_id)
    return await ui.read_model.task_attempts(run_id, task_id)


handlers = [list_runs, count_runs, get_run, run_tasks, task_attempts]
