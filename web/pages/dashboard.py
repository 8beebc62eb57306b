"""`/`: runs by status, the newest runs, agents with their heartbeat age, queue depths. The
runs part updates live from `/api/v1/stream` (static/js/runs.js)."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from core.errors import Unavailable
from projections.protocol import all_statuses
from web.context import UiContext
from web.pages.fleet import read_fleet
from web.pages.templating import render

RECENT = 10


@get("/", name="dashboard")
async def dashboard(ui: NamedDependency[UiContext]) -> Response[str]:
    error = ""
    try:
        counts = await ui.read_model.count_runs()
        recent = (await ui.read_model.list_runs(limit=RECENT)).items
    except Unavailable as exc:
        counts, recent, error = all_statuses(), (), f"the read model did not answer: {exc}"
    return render(
        "dashboard.html",
        nav="dashboard",
        counts=counts,
        total=sum(counts.values()),
        runs=recent,
        fleet=await read_fleet(ui),
        error=error,
    )


handlers = [dashboard]
