"""Cancel signals and command output in memory."""

from __future__ import annotations

import asyncio
import collections
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.fakes._sync import Changed

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from tests.fakes.backplane import MemoryBackplane

__all__ = [
    "LOG_CHUNK_MAX",
    "CancelHub",
    "LogChunk",
    "LogStream",
    "MemoryCancelSignals",
    "MemoryLogStore",
]

LOG_CHUNK_MAX = 256 * 1024  # larger writes are stored as several chunks, as on NATS


class _Inbox:
    """What one listener has been sent and not read yet."""

    def __init__(self) -> None:
        self.items: collections.deque[str] = collections.deque()
        self.changed = Changed()


class CancelHub:
    """The server side of cancel signals: like core NATS, not stored, so only listeners that
    are listening when a signal is announced receive it."""

    def __init__(self) -> None:
        self.inboxes: set[_Inbox] = set()

    def announce(self, run_id: str) -> None:
        for inbox in self.inboxes:
            inbox.items.append(run_id)
            inbox.changed.notify()


class MemoryCancelSignals:
    """`services.ports.CancelSignals` over a `CancelHub`."""

    def __init__(self, conn: MemoryBackplane, hub: CancelHub) -> None:
        self._conn = conn
        self._hub = hub

    async def announce(self, run_id: str) -> None:
        self._conn.check_open()
        self._hub.announce(run_id)
        await asyncio.sleep(0)

    async def listen(self) -> AsyncGenerator[str, None]:
        inbox = _Inbox()
        self._hub.inboxes.add(inbox)  # subscribed from the first `anext`, as on NATS
        try:
            while not self._conn.ended():
                if inbox.items:
                    yield inbox.items.popleft()
                else:
                    await self._conn.wait(inbox.changed.future())
        finally:
            self._hub.inboxes.discard(inbox)


@dataclass(frozen=True, slots=True)
class LogChunk:
    seq: int
    run_id: str
    task_id: str
    attempt: int
    data: bytes
    stream: str


class LogStream:
    """The server side: what CX_LOGS holds."""

    def __init__(self) -> None:
        self.chunks: list[LogChunk] = []
        self.changed = Changed()

    def store(self, run_id: str, task_id: str, attempt: int, data: bytes, stream: str) -> int:
        seq = len(self.chunks) + 1
        self.chunks.append(LogChunk(seq, run_id, task_id, attempt, data, stream))
        self.changed.notify()
        return seq


class MemoryLogStore:
    """`services.ports.LogStore` over a `LogStream`."""

    def __init__(self, conn: MemoryBackplane, stream: LogStream) -> None:
        self._conn = conn
        self._stream = stream

    def write_nowait(
        self, run_id: str, task_id: str, attempt: int, data: bytes, *, stream: str = "stdout"
    ) -> asyncio.Future[int]:
        pieces = [data[i : i + LOG_CHUNK_MAX] for i in range(0, len(data), LOG_CHUNK_MAX)] or [b""]
        futures = [
            self._conn.publish_nowait(
                functools.partial(self._stream.store, run_id, task_id, attempt, piece, stream)
            )
            for piece in pieces
        ]
        return futures[-1]  # stored in order: the last one's sequence comes last

    async def read(
        self, run_id: str, task_id: str, attempt: int | None = None, *, follow: bool = False
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        self._conn.check_open()
        chunks = self._stream.chunks
        i = 0
        while not self._conn.ended():
            while i < len(chunks):
                chunk = chunks[i]
                i += 1
                if (
                    chunk.run_id == run_id
                    and chunk.task_id == task_id
                    and (attempt is None or chunk.attempt == attempt)
                ):
                    yield chunk.attempt, chunk.data
            if not follow:
                return
            await self._conn.wait(self._stream.changed.future())
