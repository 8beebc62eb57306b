"""Command output (`services.ports.LogStore`) on CX_LOGS: `cx.log.<run>.<task>.<attempt>`."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from services.nats import reader
from services.nats.names import (
    CX_STREAM_HEADER,
    LOGS_STREAM,
    MSG_ID,
    log_subject,
    log_subjects,
)

if TYPE_CHECKING:
    from services.nats.connection import Connection
    from services.nats.publisher import Publisher

__all__ = ["LOG_CHUNK_MAX", "NatsLogStore"]

LOG_CHUNK_MAX: Final = 256 * 1024  # larger writes are split; well under max_payload


class NatsLogStore:
    def __init__(self, conn: Connection, publisher: Publisher) -> None:
        self._conn = conn
        self._publisher = publisher
        self._ids = itertools.count()
        self._instance = f"{os.getpid()}-{id(self):x}"

    def write_nowait(
        self, run_id: str, task_id: str, attempt: int, data: bytes, *, stream: str = "stdout"
    ) -> asyncio.Future[int]:
        """Store a chunk of a command's output; large chunks are split. The future gives the
        sequence of the last piece. Each piece has its own msg id, so retries do not duplicate."""
        subject = log_subject(run_id, task_id, attempt)
        pieces = [data[i : i + LOG_CHUNK_MAX] for i in range(0, len(data), LOG_CHUNK_MAX)]
        futures = [
            self._publisher.publish_nowait(
                subject,
                piece,
                {CX_STREAM_HEADER: stream, MSG_ID: f"log/{self._instance}/{next(self._ids)}"},
            )
            for piece in pieces or [b""]
        ]
        if len(futures) == 1:
            return futures[0]
        return asyncio.ensure_future(_last_of(futures))

    async def read(
        self, run_id: str, task_id: str, attempt: int | None = None, *, follow: bool = False
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Output chunks of a task as (attempt, bytes): one attempt or all, stored or live."""
        subject = log_subjects(run_id, task_id, attempt)
        source = (
            reader.follow(self._conn, LOGS_STREAM, subject)
            if follow
            else reader.replay(self._conn, LOGS_STREAM, subject)
        )
        async for _, _, msg in source:
            yield int(msg.subject.rsplit(".", 1)[1]), msg.data


async def _last_of(futures: list[asyncio.Future[int]]) -> int:
    results = await asyncio.gather(*futures)
    return results[-1]
