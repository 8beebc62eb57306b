"""The server-rendered pages of the web UI (`router`, mounted at `/` by `web.app`), with the
static files they load under `/static` (web/static: the pages' CSS and JavaScript and the
vendored Cytoscape.js).

Pages read the read model and the live agent registry and work queues; every write a page offers
(schedule, cancel, rerun) is a call of its JavaScript to the JSON API (`/api/v1`), so there is one
write path. `template_config()` gives an app the pages' Jinja environment if it wants it; the
pages do not need it (they render with it themselves: web/pages/templating.py).
"""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide

from web.context import provide_ui
from web.pages import audit, dashboard, definitions, fleet, runs
from web.pages.failures import exception_handlers
from web.pages.templating import static_router, template_config

__all__ = ["router", "template_config"]

router = Router(
    path="/",
    route_handlers=[
        *dashboard.handlers,
        *runs.handlers,
        *definitions.handlers,
        *fleet.handlers,
        *audit.handlers,
        static_router(),
    ],
    dependencies={"ui": Provide(provide_ui, sync_to_thread=False)},
    exception_handlers=exception_handlers,
    include_in_schema=False,  # pages are not API: /schema lists /api/v1 only
)
