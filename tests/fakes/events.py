"""The event log in memory: one global sequence, one ordered list per run, deduplication by
message id within a duplicate window, and the expected-last-sequence check of JetStream.

Events are stored as the bytes `core.events.encode` gives and decoded on every read, exactly as
on NATS, so an event that does not survive the round trip fails here too.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, overload

import msgspec
import structlog

from core.errors import Conflict
from core.events import TERMINAL, AnyEvent, RunScheduled, decode, encode, msg_id
from services.ports import RunExists
from tests.fakes._sync import Changed

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from tests.fakes.backplane import MemoryBackplane
    from tests.fakes.clock import Clock
    from tests.fakes.faults import Faults

__all__ = ["EventStore", "MemoryEventLog"]

log = structlog.get_logger("cyclonetix.fakes")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    run_id: str
    msg_id: str | None
    data: bytes
    writer: str | None = None  # the connection that stored it (None: injected bytes)


class EventStore:
    """The server side: what CX_EVENTS holds, shared by every connection."""

    def __init__(self, clock: Clock, duplicate_window: float) -> None:
        self.clock = clock
        self.duplicate_window = duplicate_window
        self.messages: list[StoredMessage] = []  # messages[i].seq == i + 1
        self.by_run: dict[str, list[StoredMessage]] = {}
        self._ids: dict[str, tuple[int, float]] = {}  # msg id -> (seq, stored at)
        self.changed = Changed()

    def last_seq(self) -> int:
        return len(self.messages)

    def run(self, run_id: str) -> list[StoredMessage]:
        return self.by_run.get(run_id, [])

    def _duplicate_of(self, mid: str) -> int | None:
        hit = self._ids.get(mid)
        if hit is None:
            return None
        seq, stored_at = hit
        if self.clock.now() - stored_at > self.duplicate_window:
            del self._ids[mid]
            return None
        return seq

    def store(self, run_id: str, data: bytes, mid: str | None, writer: str | None = None) -> int:
        """Store unless `mid` was stored within the duplicate window: the (original) sequence.
        `writer` names the connection, for tests that ask who wrote what."""
        if mid is not None and (seq := self._duplicate_of(mid)) is not None:
            return seq
        message = StoredMessage(len(self.messages) + 1, run_id, mid, data, writer)
        self.messages.append(message)
        self.by_run.setdefault(run_id, []).append(message)
        if mid is not None:
            self._ids[mid] = (message.seq, self.clock.now())
        self.changed.notify()
        return message.seq

    def store_expected(
        self, run_id: str, data: bytes, mid: str, expected: int, writer: str | None = None
    ) -> int:
        """`store` only if the run's last message is at `expected`.

        As on JetStream, the expected-sequence check comes before deduplication, so a retry of
        our own stored-but-unacknowledged append fails the check: it is recognised as ours when
        the first message after `expected` is this very one (same id *and* bytes — a second
        RunScheduled for a taken run id has the same id but is a different request).
        """
        run = self.run(run_id)
        last = run[-1].seq if run else 0
        if last != expected:
            i = bisect.bisect_right(run, expected, key=lambda m: m.seq)
            after = run[i] if i < len(run) else None
            if after is not None and after.msg_id == mid and after.data == data:
                return after.seq
            raise Conflict(f"run {run_id!r} has events after sequence {expected}")
        if (seq := self._duplicate_of(mid)) is not None and self.messages[seq - 1].data != data:
            # Deduplication comes after the check: the stored event is ours only if its bytes are.
            raise Conflict(f"run {run_id!r} has another event with id {mid!r}")
        return self.store(run_id, data, mid, writer)


def _decoded(message: StoredMessage) -> AnyEvent | None:
    try:
        return decode(message.data)
    except msgspec.DecodeError as exc:
        log.warning(
            "fake.undecodable_event", run_id=message.run_id, seq=message.seq, error=str(exc)
        )
        return None


class MemoryEventLog:
    """`services.ports.EventLog` over an `EventStore`, through one connection."""

    def __init__(self, conn: MemoryBackplane, store: EventStore, faults: Faults) -> None:
        self._conn = conn
        self._store = store
        self._faults = faults

    def _publish(self, run_id: str, data: bytes, mid: str, expected: int | None) -> int:
        if self._faults.append_fault(self._conn.name):
            raise self._faults.unavailable(f"append to run {run_id!r} was not acknowledged")
        writer = self._conn.name
        if expected is None:
            seq = self._store.store(run_id, data, mid, writer)
        else:
            seq = self._store.store_expected(run_id, data, mid, expected, writer)
        if self._faults.take("lost_append_acks"):
            raise self._faults.unavailable(f"append to run {run_id!r} stored, its ack lost")
        return seq

    async def append(self, event: AnyEvent) -> int:
        self._conn.check_open()
        seq = self._publish(event.run_id, encode(event), msg_id(event), None)
        await asyncio.sleep(0)  # a real append always waits for its ack
        return seq

    def append_nowait(self, event: AnyEvent) -> asyncio.Future[int]:
        data, mid = encode(event), msg_id(event)  # an unencodable event fails here, at once
        return self._conn.publish_nowait(lambda: self._publish(event.run_id, data, mid, None))

    async def flush(self) -> None:
        await self._conn.flush()

    async def append_expected(self, event: AnyEvent, expected: int) -> int:
        self._conn.check_open()
        seq = self._publish(event.run_id, encode(event), msg_id(event), expected)
        await asyncio.sleep(0)
        return seq

    async def schedule_run(self, event: RunScheduled) -> int:
        try:
            return await self.append_expected(event, 0)
        except Conflict:
            raise RunExists(event.run_id) from None

    async def last_seq(self) -> int:
        self._conn.check_open()
        await asyncio.sleep(0)
        return self._store.last_seq()

    async def first_seq(self, run_id: str) -> int | None:
        self._conn.check_open()
        await asyncio.sleep(0)
        run = self._store.run(run_id)
        return run[0].seq if run else None

    async def last_event(self, run_id: str) -> tuple[int, AnyEvent] | None:
        # Read when called, answered a loop turn later: a request on the wire is served in
        # order with the connection's other requests, not after what is sent later.
        self._conn.check_open()
        run = self._store.run(run_id)
        last = run[-1] if run else None
        await asyncio.sleep(0)
        event = None if last is None else _decoded(last)
        return None if last is None or event is None else (last.seq, event)

    async def history(self, run_id: str) -> list[tuple[int, AnyEvent]]:
        self._conn.check_open()
        await asyncio.sleep(0)
        out: list[tuple[int, AnyEvent]] = []
        for message in list(self._store.run(run_id)):
            event = _decoded(message)
            if event is not None:
                out.append((message.seq, event))
        return out

    @overload
    def tail(
        self,
        *,
        from_seq: int = 1,
        run_id: str | None = None,
        stop: asyncio.Event | None = None,
        skipped: Literal[False] = False,
    ) -> AsyncGenerator[tuple[int, AnyEvent, int], None]: ...

    @overload
    def tail(
        self,
        *,
        from_seq: int = 1,
        run_id: str | None = None,
        stop: asyncio.Event | None = None,
        skipped: Literal[True],
    ) -> AsyncGenerator[tuple[int, AnyEvent | None, int], None]: ...

    async def tail(
        self,
        *,
        from_seq: int = 1,
        run_id: str | None = None,
        stop: asyncio.Event | None = None,
        skipped: bool = False,
    ) -> AsyncGenerator[tuple[int, AnyEvent | None, int], None]:
        store = self._store
        next_seq = max(from_seq, 1)
        while not self._conn.ended(stop):
            # (re-read each round: a run's list exists only once it has an event)
            messages = store.messages if run_id is None else store.run(run_id)
            i = bisect.bisect_left(messages, next_seq, key=lambda m: m.seq)
            while i < len(messages):
                message = messages[i]
                i += 1
                next_seq = message.seq + 1
                event = _decoded(message)
                if event is None and not skipped:
                    continue
                # pending: what the server still had for this reader when it delivered this
                yield message.seq, event, len(messages) - i
                if self._conn.ended(stop):
                    return
            if not await self._conn.wait(store.changed.future(), stop=stop):
                return

    async def follow_run(
        self, run_id: str, from_seq: int = 1, *, stop: asyncio.Event | None = None
    ) -> AsyncGenerator[tuple[int, AnyEvent], None]:
        async for seq, event, _ in self.tail(from_seq=from_seq, run_id=run_id, stop=stop):
            yield seq, event
            if isinstance(event, TERMINAL):
                return
