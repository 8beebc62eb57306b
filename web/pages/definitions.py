"""`/tasks` and `/dags`: the published definitions (search, filter by queue and tag), each
with its YAML and a schedule form (static/js/schedule.js posts it to `POST /api/v1/runs` and
shows a 422's message next to the field it names)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec
import yaml
from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from core.definitions import DagDef, Definitions, TaskDef
from core.errors import NotFound
from web.context import UiContext
from web.pages.templating import render


def as_yaml(definition: TaskDef | DagDef) -> str:
    """The definition as YAML, its fields in declaration order (defaults left out)."""
    text: str = yaml.safe_dump(
        msgspec.to_builtins(definition), sort_keys=False, allow_unicode=True, width=100
    )
    return text


def _matches(d: TaskDef | DagDef, q: str, tag: str, queue: str | None) -> bool:
    words = f"{d.id} {d.name} {d.description}".lower()
    return (
        (not q or q.lower() in words)
        and (not tag or tag in d.tags)
        and (queue is None or not queue or (isinstance(d, TaskDef) and d.queue == queue))
    )


def _options(values: Iterable[str]) -> list[str]:
    return sorted(set(values))


def _form(defs: Definitions, kind: Literal["task", "dag"], target: str) -> dict[str, object]:
    """What the schedule form needs: its target and the contexts one may pick."""
    default = defs.dags[target].context if kind == "dag" else None
    return {"kind": kind, "target": target, "contexts": sorted(defs.contexts), "default": default}


@get("/tasks", name="tasks")
async def tasks_page(
    ui: NamedDependency[UiContext],
    q: FromQuery[str] = "",
    queue: FromQuery[str] = "",
    tag: FromQuery[str] = "",
) -> Response[str]:
    defs = await ui.backplane.definitions.load()
    shown = [defs.tasks[k] for k in sorted(defs.tasks) if _matches(defs.tasks[k], q, tag, queue)]
    return render(
        "tasks.html",
        nav="tasks",
        tasks=shown,
        total=len(defs.tasks),
        query={"q": q, "queue": queue, "tag": tag},
        queues=_options(t.queue for t in defs.tasks.values()),
        tags=_options(tag for t in defs.tasks.values() for tag in t.tags),
    )


def _definition_page(defs: Definitions, kind: Literal["task", "dag"], id: str) -> Response[str]:
    """The page of one task or DAG: its YAML and the schedule form."""
    folder = f"{kind}s"
    found: TaskDef | DagDef | None = (defs.tasks if kind == "task" else defs.dags).get(id)
    if found is None:
        raise NotFound(f"no {'task' if kind == 'task' else 'DAG'} {id!r} is published")
    return render(
        "definition.html",
        nav=folder,
        definition=found,
        kind=kind,
        source=defs.source(folder, id),
        text=as_yaml(found),
        form=_form(defs, kind, id),
    )


@get("/tasks/{task_id:str}", name="task")
async def task_page(task_id: FromPath[str], ui: NamedDependency[UiContext]) -> Response[str]:
    return _definition_page(await ui.backplane.definitions.load(), "task", task_id)


@get("/dags", name="dags")
async def dags_page(
    ui: NamedDependency[UiContext], q: FromQuery[str] = "", tag: FromQuery[str] = ""
) -> Response[str]:
    defs = await ui.backplane.definitions.load()
    shown = [defs.dags[k] for k in sorted(defs.dags) if _matches(defs.dags[k], q, tag, None)]
    return render(
        "dags.html",
        nav="dags",
        dags=shown,
        total=len(defs.dags),
        query={"q": q, "tag": tag},
        tags=_options(tag for d in defs.dags.values() for tag in d.tags),
    )


@get("/dags/{dag_id:str}", name="dag")
async def dag_page(dag_id: FromPath[str], ui: NamedDependency[UiContext]) -> Response[str]:
    return _definition_page(await ui.backplane.definitions.load(), "dag", dag_id)


handlers = [tasks_page, task_page, dags_page, dag_page]
