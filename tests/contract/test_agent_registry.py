"""The agent registry's contract: the latest heartbeat of every agent, until removed."""

from __future__ import annotations

import datetime as dt

from core.agents import AgentInfo
from services.ports import Backplane
from tests.contract.harness import NOW, Contract, OnMemory, OnNats


def agent(agent_id: str, seen_at: dt.datetime = NOW, running: tuple[str, ...] = ()) -> AgentInfo:
    return AgentInfo(
        id=agent_id,
        host="node.example.com",
        pid=42,
        queues=["default", "gpu"],
        running=list(running),
        version="0.1.0",
        started_at=NOW,
        seen_at=seen_at,
    )


class AgentRegistryContract(Contract):
    async def test_heartbeats_list_and_remove(self, bp: Backplane) -> None:
        registry = bp.agents
        assert await registry.list() == []
        await registry.heartbeat(agent("node.example.com-42"))
        await registry.heartbeat(agent("b"))
        later = NOW + dt.timedelta(seconds=5)
        await registry.heartbeat(agent("b", seen_at=later, running=("r1/t1/1",)))
        assert await registry.list() == [
            agent("b", seen_at=later, running=("r1/t1/1",)),  # the latest heartbeat only
            agent("node.example.com-42"),
        ]
        await registry.remove("node.example.com-42")
        await registry.remove("never-seen")
        assert [a.id for a in await registry.list()] == ["b"]


class TestAgentRegistryOnMemory(OnMemory, AgentRegistryContract):
    pass


class TestAgentRegistryOnNats(OnNats, AgentRegistryContract):
    pass
