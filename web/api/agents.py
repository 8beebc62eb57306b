"""Agents with a live heartbeat (`cx_agents`), read live from NATS, never projected."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from core.agents import AgentInfo
from web.context import UiContext


@get("/agents", summary="Agents with a live heartbeat, by id")
async def agents(ui: NamedDependency[UiContext]) -> list[AgentInfo]:
    return sorted(await ui.backplane.agents.list(), key=lambda a: a.id)


handlers = [agents]
