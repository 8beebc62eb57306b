"""`/agents` and `/queues`: read live from NATS (the agent registry's heartbeats and the work
consumers' info), never from the read model (DESIGN §4)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from litestar import Response, get
from litestar.di import NamedDependency

from core.agents import AgentInfo
from core.errors import Unavailable
from web.context import UiContext
from web.pages.templating import render

STALE_S = 30.0  # a heartbeat older than this is shown as late (agents beat every few seconds)


@dataclass
class QueueView:
    name: str
    depth: int
    agents: int


@dataclass
class Fleet:
    """Agents and queues as NATS reports them now; `error` when it could not be asked."""

    agents: list[AgentInfo] = field(default_factory=list)
    queues: list[QueueView] = field(default_factory=list)
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    error: str = ""

    def age_s(self, agent: AgentInfo) -> float:
        return max(0.0, (self.now - agent.seen_at).total_seconds())

    def late(self, agent: AgentInfo) -> bool:
        return self.age_s(agent) > STALE_S


async def read_fleet(ui: UiContext) -> Fleet:
    """The agents (by id) and every queue that has waiting work or an agent serving it."""
    fleet = Fleet()
    try:
        fleet.agents = sorted(await ui.backplane.agents.list(), key=lambda a: a.id)
        depths = await ui.backplane.work.depths()
    except Unavailable as exc:  # the page still renders, saying what is missing
        fleet.error = f"NATS did not answer: {exc}"
        return fleet
    serving: dict[str, int] = {}
    for agent in fleet.agents:
        for queue in agent.queues:
            serving[queue] = serving.get(queue, 0) + 1
    fleet.queues = [
        QueueView(name, depths.get(name, 0), serving.get(name, 0))
        for name in sorted(set(depths) | set(serving))
    ]
    return fleet


@get("/agents", name="agents")
async def agents_page(ui: NamedDependency[UiContext]) -> Response[str]:
    return render("agents.html", nav="agents", fleet=await read_fleet(ui))


@get("/queues", name="queues")
async def queues_page(ui: NamedDependency[UiContext]) -> Response[str]:
    return render("queues.html", nav="queues", fleet=await read_fleet(ui))


handlers = [agents_page, queues_page]
