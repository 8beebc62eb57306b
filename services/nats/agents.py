"""The agent registry (`services.ports.AgentRegistry`) in the `cx_agents` KV bucket: one key
per agent (`agent.<id>`), expiring AGENT_TTL after its last heartbeat."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import structlog

from core.agents import AgentInfo
from services.nats.names import AGENTS_BUCKET, KV_OPERATION, kv_subject, kv_token
from services.nats.reader import kv_snapshot

if TYPE_CHECKING:
    from services.nats.connection import Connection
    from services.nats.publisher import Publisher

__all__ = ["NatsAgentRegistry"]

log = structlog.get_logger("cyclonetix.nats")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AgentInfo)


def _key(agent_id: str) -> str:
    return kv_subject(AGENTS_BUCKET, f"agent.{kv_token(agent_id)}")


class NatsAgentRegistry:
    def __init__(self, conn: Connection, publisher: Publisher) -> None:
        self._conn = conn
        self._publisher = publisher

    async def heartbeat(self, info: AgentInfo) -> None:
        await self._publisher.publish(_key(info.id), _json.encode(info), None)

    async def remove(self, agent_id: str) -> None:
        await self._publisher.publish(_key(agent_id), b"", {KV_OPERATION: "DEL"})

    async def list(self) -> list[AgentInfo]:
        agents = []
        for key, msg in (await kv_snapshot(self._conn, AGENTS_BUCKET, "agent.>")).items():
            try:
                agents.append(_decoder.decode(msg.data))
            except msgspec.DecodeError as exc:
                log.warning("nats.undecodable_agent", key=key, error=str(exc))
        return sorted(agents, key=lambda a: a.id)
