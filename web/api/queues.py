"""Work queues and how many dispatches wait in each, read live from the consumers' info."""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency

from web.context import UiContext


class Queue(msgspec.Struct, kw_only=True):
    name: str
    depth: int  # dispatches waiting to be delivered
    agents: int  # live agents serving it


@get("/queues", summary="Work queues with their depth and the agents serving each")
async def queues(ui: NamedDependency[UiContext]) -> list[Queue]:
    depths = await ui.backplane.work.depths()
    serving: dict[str, int] = {}
    for agent in await ui.backplane.agents.list():
        for name in agent.queues:
            serving[name] = serving.get(name, 0) + 1
    names = sorted(set(depths) | set(serving))
    return [Queue(name=n, depth=depths.get(n, 0), agents=serving.get(n, 0)) for n in names]


handlers = [queues]
