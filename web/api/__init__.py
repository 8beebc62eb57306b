"""The JSON API under `/api/v1`: one module per resource, one router that holds them all.
Handlers get the `UiContext` as `ui`.

Responses are the read model's own msgspec structs (`projections.views`); errors are the one
envelope of `web.errors`. Every write goes through `services.commands`, as the CLI's do.
"""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from web.api import agents, audit, definitions, events, logs, queues, runs, schedule
from web.context import provide_ui
from web.live import run_stream, runs_stream

__all__ = ["router"]

router = Router(
    path="/api/v1",
    route_handlers=[
        *runs.handlers,
        *events.handlers,
        *logs.handlers,
        *schedule.handlers,
        *definitions.handlers,
        *agents.handlers,
        *queues.handlers,
        *audit.handlers,
        run_stream,
        runs_stream,
    ],
    dependencies={"ui": Provide(provide_ui, sync_to_thread=False)},
    tags=["api"],
)
