"""Cancel signals (`services.ports.CancelSignals`) on core NATS: `cx.cancel.<run_id>`.

Not stored: the durable fact is RunCancelRequested in the event log. An agent that misses a
signal lets the command finish; the orchestrator announces again when it restarts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from services.nats.connection import unavailable
from services.nats.names import CANCEL_PREFIX, decode_token, subject_token

if TYPE_CHECKING:
    from services.nats.connection import Connection

__all__ = ["NatsCancelSignals"]


class NatsCancelSignals:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def announce(self, run_id: str) -> None:
        """Tell every agent to kill the commands it runs for `run_id`."""
        with unavailable("a cancel announcement"):
            await self._conn.nc.publish(f"{CANCEL_PREFIX}.{subject_token(run_id)}", b"")

    async def listen(self) -> AsyncIterator[str]:
        """Run ids announced as cancelled, as they arrive."""
        conn = self._conn
        with unavailable("a subscription to cancel announcements"):
            sub = await conn.nc.subscribe(f"{CANCEL_PREFIX}.*")
        conn.subs.add(sub)
        try:
            async for msg in sub.messages:
                yield decode_token(msg.subject.split(".", 2)[2])
        finally:
            await conn.unsubscribe(sub)
