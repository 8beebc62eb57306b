"""The published definitions (`cx_defs`): tasks, DAGs, contexts and parameter sets, as the
schedule form and the definition pages show them."""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency

from core.definitions import ContextDef, DagDef, ParameterSetDef, TaskDef
from web.context import UiContext


class Published(msgspec.Struct, kw_only=True):
    tasks: tuple[TaskDef, ...]
    dags: tuple[DagDef, ...]
    contexts: tuple[ContextDef, ...]
    parameter_sets: tuple[ParameterSetDef, ...]


@get("/definitions", summary="Published tasks, DAGs, contexts and parameter sets, by id")
async def definitions(ui: NamedDependency[UiContext]) -> Published:
    defs = await ui.backplane.definitions.load()
    return Published(
        tasks=tuple(defs.tasks[k] for k in sorted(defs.tasks)),
        dags=tuple(defs.dags[k] for k in sorted(defs.dags)),
        contexts=tuple(defs.contexts[k] for k in sorted(defs.contexts)),
        parameter_sets=tuple(defs.parameter_sets[k] for k in sorted(defs.parameter_sets)),
    )


handlers = [definitions]
