"""`/`: runs by status, task attempts ended per minute over the last hour, the newest runs,
agents with their heartbeat age, queue depths. The runs part updates live from
`/api/v1/stream` (static/js/runs.js), agents and queues every few seconds (static/js/fleet.js)."""

from __future__ import annotations

import datetime as dt

from litestar import Response, get
from litestar.di import NamedDependency

from core.errors import Unavailable
from projections.protocol import all_statuses
from web.context import UiContext
from web.pages.fleet import read_fleet
from web.pages.templating import render
from web.pages.throughput import throughput

RECENT = 10


@get("/", name="dashboard")
async def dashboard(ui: NamedDependency[UiContext]) -> Response[str]:
    error = ""
    now = dt.datetime.now(dt.UTC)
    per_minute: list[int] = []
    try:
        counts = await ui.read_model.count_runs()
        recent = (await ui.read_model.list_runs(limit=RECENT)).items
        per_minute = (await throughput(ui, now)).series(now)
    except Unavailable as exc:
        counts, recent, error = all_statuses(), (), f"the read model did not answer: {exc}"
    return render(
        "dashboard.html",
        nav="dashboard",
        counts=counts,
        total=sum(counts.values()),
        runs=recent,
        fleet=await read_fleet(ui),
        per_minute=per_minute,
        peak=max(per_minute, default=0),
        error=error,
    )


handlers = [dashboard]
