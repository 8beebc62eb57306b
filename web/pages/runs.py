"""`/runs` (filters, cursor pages, progress, live), `/runs/{run_id}` (the run page: its graph,
task panel, log tail, buttons and history slider, drawn by static/js/run.js from the run's JSON
embedded in the page) and `/runs/{run_id}/timeline` (a Gantt chart of its attempts)."""

from __future__ import annotations

import datetime as dt

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from markupsafe import Markup

from core.errors import NotFound
from core.run import RunStatus, TaskStatus
from projections.views import AttemptRow, RunDetail, RunFilter
from web.context import UiContext
from web.pages import timeline
from web.pages.templating import render, script_json

PAGE = 50


def _blank(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


@get("/runs", name="runs")
async def runs_page(
    ui: NamedDependency[UiContext],
    status: FromQuery[str | None] = None,
    dag: FromQuery[str | None] = None,
    task: FromQuery[str | None] = None,
    cursor: FromQuery[str | None] = None,
) -> Response[str]:
    """A bad filter value is said on the page (the list is then unfiltered by it)."""
    errors: list[str] = []
    wanted: RunStatus | None = None
    if _blank(status) is not None:
        try:
            wanted = RunStatus(str(status).strip())
        except ValueError:
            errors.append(f"status: no such run status {status!r}")
    dag, task = _blank(dag), _blank(task)
    f = RunFilter(status=wanted, kind="dag" if dag else None, target=dag, task=task)
    try:
        page = await ui.read_model.list_runs(f, PAGE, _blank(cursor))
    except ValueError as exc:  # a cursor of no list: start again from the first page
        errors.append(f"cursor: {exc}")
        page = await ui.read_model.list_runs(f, PAGE, None)
    filters = {"status": wanted or "", "dag": dag or "", "task": task or ""}
    return render(
        "runs.html",
        nav="runs",
        runs=page.items,
        next_cursor=page.next_cursor,
        first_page=_blank(cursor) is None,
        filters=filters,
        error="; ".join(errors),
    )


async def _detail(ui: UiContext, run_id: str) -> RunDetail:
    detail = await ui.read_model.get_run(run_id)
    if detail is None:
        raise NotFound(f"no run {run_id!r} (not scheduled, or not projected yet)")
    return detail


def run_json(detail: RunDetail) -> Markup:
    """The run for the page's script, as GET /api/v1/runs/ID answers it, escaped for a
    <script> element."""
    return script_json(detail)


@get("/runs/{run_id:str}", name="run")
async def run_page(run_id: FromPath[str], ui: NamedDependency[UiContext]) -> Response[str]:
    detail = await _detail(ui, run_id)
    return render(
        "run.html",
        nav="runs",
        run=detail.run,
        tasks=len(detail.tasks),
        data=run_json(detail),
        statuses=tuple(TaskStatus),
    )


@get("/runs/{run_id:str}/timeline", name="timeline")
async def timeline_page(run_id: FromPath[str], ui: NamedDependency[UiContext]) -> Response[str]:
    detail = await _detail(ui, run_id)
    attempts: list[AttemptRow] = []
    for t in detail.tasks:
        if t.attempt > 1:  # only retried tasks have attempts their row does not show
            attempts.extend(await ui.read_model.task_attempts(run_id, t.task_id))
    found, waiting = timeline.spans(detail.tasks, attempts)
    chart = timeline.build(found, waiting, dt.datetime.now(dt.UTC))
    return render("timeline.html", nav="runs", run=detail.run, chart=chart)


handlers = [runs_page, run_page, timeline_page]
