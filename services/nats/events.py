"""The event log (`services.ports.EventLog`) on the CX_EVENTS stream: one subject per run and
event type, `cx.ev.<shard>.<run_id>.<type>` (services/nats/names.py).

A run's events are read from its subjects of every type (`cx.ev.<shard>.<run_id>.*`) and from
`cx.ev.<shard>.<run_id>`, where events were appended before their subject named their type, so
a history stored then still reads, folds and replays; nothing is written there any more. A run
whose newest events are in that layout goes on in the new one (`append_expected`). Every role
must run this layout: a process of the earlier one would append to the old subject, which the
conditional appends here do not see (so upgrade them together).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final, Literal, overload

import msgspec
import nats.js.errors
import structlog

from core.errors import Conflict
from core.events import TERMINAL, AnyEvent, RunScheduled, decode, encode, msg_id
from services.nats.connection import unavailable
from services.nats.names import (
    ALL_EVENTS,
    EVENTS_STREAM,
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
    MSG_ID,
    event_subject_of,
    legacy_event_subject,
    run_event_subjects,
    run_events_subject,
)
from services.nats.reader import follow, replay
from services.ports import RunExists

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.api import RawStreamMsg

    from services.nats.connection import Connection
    from services.nats.publisher import Publisher

__all__ = ["NatsEventLog", "first_message"]

log = structlog.get_logger("cyclonetix.nats")

# nats-server `server/errors.json`: "wrong last sequence: {seq}", and the same without the
# number (2.12+: the clustered check when the leader has proposals in flight).
ERRS_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})


def _decode(seq: int, msg: Msg) -> AnyEvent | None:
    try:
        return decode(msg.data)
    except msgspec.DecodeError as exc:
        log.warning("nats.undecodable_event", subject=msg.subject, seq=seq, error=str(exc))
        return None


async def first_message(conn: Connection, run_id: str) -> RawStreamMsg | None:
    """The first message stored for the run (a direct read per layout: one stored in the old
    one comes first); None when it has none."""
    with unavailable("a read of the run's first event"):
        for subject in run_event_subjects(run_id):
            try:
                return await conn.js.get_msg(
                    EVENTS_STREAM, seq=1, subject=subject, next=True, direct=True
                )
            except nats.js.errors.NotFoundError:
                continue
    return None


async def _last_message(conn: Connection, run_id: str) -> RawStreamMsg | None:
    """The newest message stored for the run (one direct read; two when it has none in the
    current layout: one stored in the old layout is older than any in the new)."""
    for subject in reversed(run_event_subjects(run_id)):
        try:
            return await conn.js.get_last_msg(EVENTS_STREAM, subject, direct=True)
        except nats.js.errors.NotFoundError:
            continue
    return None


class NatsEventLog:
    def __init__(self, conn: Connection, publisher: Publisher) -> None:
        self._conn = conn
        self._publisher = publisher

    async def append(self, event: AnyEvent) -> int:
        ack = await self._publisher.publish(
            event_subject_of(event), encode(event), {MSG_ID: msg_id(event)}
        )
        return int(ack.seq)

    def append_nowait(self, event: AnyEvent) -> asyncio.Future[int]:
        """Pipelined `append`: returns at once; the future gives the sequence.

        `flush()` before acknowledging the input that caused these events.
        """
        return self._publisher.publish_nowait(
            event_subject_of(event), encode(event), {MSG_ID: msg_id(event)}
        )

    async def flush(self) -> None:
        await self._publisher.flush()

    async def schedule_run(self, event: RunScheduled) -> int:
        """Append the first event of a run: a run id can be used once.

        A retry of our own earlier append (same msg id and bytes) returns its sequence; any
        other event already on the run's subject raises RunExists.
        """
        if await self._in_old_layout(event.run_id):  # (the condition below sees the new only)
            raise RunExists(event.run_id)
        try:
            return await self.append_expected(event, 0)
        except Conflict:
            raise RunExists(event.run_id) from None

    async def _in_old_layout(self, run_id: str) -> bool:
        """Whether the run has events stored before subjects named their type."""
        with unavailable("a read of the run's first event"):
            try:
                await self._conn.js.get_msg(
                    EVENTS_STREAM,
                    seq=1,
                    subject=legacy_event_subject(run_id),
                    next=True,
                    direct=True,
                )
            except nats.js.errors.NotFoundError:
                return False
        return True

    async def append_expected(self, event: AnyEvent, expected: int) -> int:
        """Append `event` if the run's newest event (of any type) is still at `expected`.

        The condition names all of the run's subjects at once (`Nats-Expected-Last-Subject-
        Sequence-Subject: cx.ev.<shard>.<run_id>.*`, nats-server 2.11+)."""
        subject = event_subject_of(event)
        run_subjects = run_events_subject(event.run_id)
        mid = msg_id(event)
        payload = encode(event)
        condition = expected
        while True:
            headers = {
                MSG_ID: mid,
                EXPECTED_LAST_SUBJECT_SEQUENCE: str(condition),
                EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: run_subjects,
            }
            try:
                ack = await self._publisher.publish(subject, payload, headers)
                break
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code not in ERRS_WRONG_LAST_SEQUENCE:
                    raise
                if condition and await self._newest_in_old_layout(event.run_id, expected):
                    # The run has no event in this layout yet: its first one here expects none.
                    condition = 0
                    continue
                return await self._own_append(event.run_id, expected, payload, mid)
        if ack.duplicate:
            # Deduplication comes after the check: an event stored with our msg id is ours
            # only if its bytes are (another agent's start of the same delivery has our id).
            with unavailable("a read of the run's events"):
                stored = await self._conn.js.get_msg(EVENTS_STREAM, seq=ack.seq, direct=True)
            if stored.data != payload:
                raise Conflict(f"run {event.run_id!r} has another event with id {mid!r}")
        return int(ack.seq)

    async def _newest_in_old_layout(self, run_id: str, expected: int) -> bool:
        """Whether the run's newest event, at `expected`, was stored in the old layout (and none
        in the current one)."""
        with unavailable("a read of the run's events"):
            newest = await _last_message(self._conn, run_id)
        return (
            newest is not None
            and newest.seq == expected
            and newest.subject == legacy_event_subject(run_id)
        )

    async def _own_append(self, run_id: str, expected: int, payload: bytes, mid: str) -> int:
        """The sequence of our own append after `expected`, else Conflict.

        The expected-sequence check runs before dedup, so our own stored-but-unacked append
        lands in a refusal too: it is ours if the first event after `expected` is this very
        event (same msg id *and* bytes: a second RunScheduled for the same run id has the same
        msg id but is a different request)."""
        with unavailable("a read of the run's events"):
            try:
                after = await self._conn.js.get_msg(
                    EVENTS_STREAM,
                    seq=expected + 1,
                    subject=run_events_subject(run_id),
                    next=True,
                    direct=True,
                )
            except nats.js.errors.NotFoundError:
                after = None
        if (
            after is not None
            and after.seq
            and after.data == payload
            and (after.headers or {}).get(MSG_ID) == mid
        ):
            return int(after.seq)
        raise Conflict(f"run {run_id!r} has events after sequence {expected}")

    async def last_seq(self) -> int:
        with unavailable("a stream info request"):
            info = await self._conn.js.stream_info(EVENTS_STREAM)
        return int(info.state.last_seq)

    async def first_seq(self, run_id: str) -> int | None:
        msg = await first_message(self._conn, run_id)
        return int(msg.seq) if msg is not None and msg.seq else None

    async def last_event(self, run_id: str) -> tuple[int, AnyEvent] | None:
        with unavailable("a read of the run's last event"):
            msg = await _last_message(self._conn, run_id)
        if msg is None:
            return None
        seq = int(msg.seq or 0)
        try:
            return seq, decode(msg.data or b"")
        except msgspec.DecodeError as exc:
            log.warning("nats.undecodable_event", subject=msg.subject, seq=seq, error=str(exc))
            return None

    async def history(self, run_id: str) -> list[tuple[int, AnyEvent]]:
        out: list[tuple[int, AnyEvent]] = []
        async for seq, _, msg in replay(self._conn, EVENTS_STREAM, run_event_subjects(run_id)):
            event = _decode(seq, msg)
            if event is not None:
                out.append((seq, event))
        return out

    @overload
    def tail(
        self,
        *,
        from_seq: int = 1,
        run_id: str | None = None,
        stop: asyncio.Event | None = None,
        skipped: Literal[False] = False,
    ) -> AsyncIterator[tuple[int, AnyEvent, int]]: ...

    @overload
    def tail(
        self,
        *,
        from_seq: int = 1,
        run_id: str | None = None,
        stop: asyncio.Event | None = None,
        skipped: Literal[True],
    ) -> AsyncIterator[tuple[int, AnyEvent | None, int]]: ...

    async def tail(
        self,
        *,
        from_seq: int = 1,
        run_id: str | None = None,
        stop: asyncio.Event | None = None,
        skipped: bool = False,
    ) -> AsyncIterator[tuple[int, AnyEvent | None, int]]:
        subject = ALL_EVENTS if run_id is None else run_event_subjects(run_id)
        async for seq, pending, msg in follow(self._conn, EVENTS_STREAM, subject, from_seq, stop):
            event = _decode(seq, msg)
            if event is not None or skipped:
                yield seq, event, pending

    async def follow_run(
        self, run_id: str, from_seq: int = 1, *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[tuple[int, AnyEvent]]:
        async for seq, event, _ in self.tail(from_seq=from_seq, run_id=run_id, stop=stop):
            yield seq, event
            if isinstance(event, TERMINAL):
                return
