"""Ended runs (`services.ports.EndedRuns`): one durable consumer over CX_EVENTS, shared by every
orchestrator's notifier, that hands each run's terminal event to one of them.

The consumer sees every event (a run's subject holds them all); only the `type` field is decoded
and everything but a terminal event is acknowledged at once. It pushes to a queue group rather
than being pulled: this runs in the orchestrator's process, on every event, and nats-py's
`fetch` costs about four times as much per message (measured: ~190 us against ~45 us).

A terminal event stays unacknowledged while its webhooks are delivered (`in_progress` keeps it),
so a notifier that dies leaves it to be redelivered after `ack_wait`. The consumer starts at the
events appended after it was first created (`DeliverPolicy.NEW`: an upgrade does not notify the
runs of the past); the orchestrator opens it before it starts deciding, so no run it ends is
missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import msgspec
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from core.events import TERMINAL, RunCancelled, RunFailed, RunScheduled, RunSucceeded, decode
from services.nats.connection import describe, unavailable
from services.nats.events import first_message
from services.nats.names import ALL_EVENTS, EVENTS_STREAM, NOTIFY_CONSUMER, NOTIFY_DELIVER

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from services.nats.connection import Connection
    from services.nats.provisioning import Provisioner

__all__ = ["NatsEndedRun", "NatsEndedRuns"]

log = structlog.get_logger("cyclonetix.nats")

ACK_WAIT: Final = 30.0  # seconds an unsettled terminal event waits for a vanished notifier
# Unacknowledged messages the server lets the consumer hand out: terminal events whose
# deliveries are under way (across every notifier) plus events in flight.
MAX_ACK_PENDING: Final = 10_000
WAIT: Final = 0.5  # seconds: how quickly a closing connection is noticed while no run ends

_TERMINAL_TYPES: Final = frozenset(cls.__name__ for cls in TERMINAL)


class _Head(msgspec.Struct):
    type: str = ""


_head = msgspec.json.Decoder(_Head)


class NatsEndedRun:
    """One delivery of a terminal event (`services.ports.EndedRun`)."""

    def __init__(self, msg: Msg, seq: int, event: RunSucceeded | RunFailed | RunCancelled) -> None:
        self._msg = msg
        self.seq = seq
        self.event = event

    async def ack(self) -> None:
        with unavailable("an ack of a run's end"):
            await self._msg.ack_sync()

    async def nak(self, delay: float = 0.0) -> None:
        with unavailable("a nak of a run's end"):
            await self._msg.nak(delay=delay or None)

    async def in_progress(self) -> None:
        with unavailable("a progress report on a run's end"):
            await self._msg.in_progress()


class NatsEndedRuns:
    def __init__(
        self, conn: Connection, provisioner: Provisioner, *, ack_wait: float = ACK_WAIT
    ) -> None:
        self._conn = conn
        self._provisioner = provisioner
        self._reopening = False
        self.config = ConsumerConfig(
            name=NOTIFY_CONSUMER,
            durable_name=NOTIFY_CONSUMER,
            filter_subject=ALL_EVENTS,
            deliver_subject=NOTIFY_DELIVER,
            deliver_group=NOTIFY_CONSUMER,
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=-1,  # a run's end is never given up on
            max_ack_pending=MAX_ACK_PENDING,
        )

    async def open(self) -> None:
        """Create the shared consumer if it does not exist yet (before any run it must see
        ends: it starts at the events appended after its creation)."""
        with unavailable("the notification consumer"):
            await self._provisioner.ensure_consumer(EVENTS_STREAM, self.config)

    async def ended(self, stop: asyncio.Event) -> AsyncIterator[NatsEndedRun]:
        conn = self._conn
        ends: asyncio.Queue[NatsEndedRun] = asyncio.Queue()

        async def on_message(msg: Msg) -> None:
            item = self._terminal(msg)
            if item is None:
                await msg.ack()  # (no round trip: a lost ack only repeats a skip)
            else:
                ends.put_nowait(item)

        sub = None
        conn.on_reconnect.append(self._after_reconnect)
        try:
            while not stop.is_set() and not conn.closing:
                if sub is None:
                    try:
                        await self.open()
                        # Every notifier joins the queue group: each message goes to one.
                        sub = await conn.nc.subscribe(
                            NOTIFY_DELIVER, queue=NOTIFY_CONSUMER, cb=on_message
                        )
                        conn.subs.add(sub)
                    except Exception as exc:  # noqa: BLE001 - NATS away: try again
                        if conn.closed:
                            return
                        if conn.throttle.check("notify_consumer") is not None:
                            log.warning("nats.notify_consumer_failed", error=describe(exc))
                        await asyncio.sleep(1.0)
                        continue
                got = asyncio.ensure_future(ends.get())
                stopped = asyncio.ensure_future(stop.wait())
                try:  # (the WAIT bounds it: the loop also notices a closing connection)
                    await asyncio.wait({got, stopped}, timeout=WAIT, return_when=FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                    if not got.done():
                        got.cancel()  # (an asyncio.Queue loses nothing to a cancelled get)
                if got.done() and not got.cancelled():
                    yield got.result()
        finally:
            with contextlib.suppress(ValueError):
                conn.on_reconnect.remove(self._after_reconnect)
            if sub is not None:
                await conn.unsubscribe(sub)
            while not ends.empty():  # received but not handed out: to another notifier now
                with contextlib.suppress(Exception):
                    await ends.get_nowait().nak()

    def _after_reconnect(self) -> None:
        # A server that lost its store lost the consumer too: create it again (the core
        # subscription itself is restored by the client).
        if not self._reopening:
            self._reopening = True
            self._conn.spawn(self._reopen())

    async def _reopen(self) -> None:
        try:
            for delay in (0.1, 0.5, 1.0, 2.0, 5.0, 5.0, 5.0):
                try:
                    await self.open()
                    return
                except Exception:  # noqa: BLE001 - JetStream may still be starting
                    await asyncio.sleep(delay)
            log.warning("nats.notify_consumer_not_restored")
        finally:
            self._reopening = False

    def _terminal(self, msg: Msg) -> NatsEndedRun | None:
        """The terminal event `msg` holds, or None for anything else (decoding only the type)."""
        try:
            if _head.decode(msg.data).type not in _TERMINAL_TYPES:
                return None
            event = decode(msg.data)
        except msgspec.DecodeError:
            return None  # not an event this version knows: not a terminal one either
        assert isinstance(event, RunSucceeded | RunFailed | RunCancelled)
        return NatsEndedRun(msg, int(msg.metadata.sequence.stream), event)

    async def scheduled(self, run_id: str) -> RunScheduled | None:
        raw = await first_message(self._conn, run_id)
        if raw is None:
            return None
        try:
            event = decode(raw.data or b"")
        except msgspec.DecodeError:
            return None
        return event if isinstance(event, RunScheduled) else None
