"""The work queue (`services.ports.WorkQueue`) on the CX_WORK stream.

One subject per queue (`cx.work.<queue>`) and one durable pull consumer per queue, shared by
every agent of the queue (that is the queue group). A delivery is handed out as a `NatsWorkItem`
(the decoded dispatch plus how to settle it); a message that does not decode is terminated here
and never reaches an agent. Deliveries that run out (`max_deliver`) are announced by JetStream
as advisories, kept in CX_ADVISORIES until an orchestrator handles them (`lost`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Final

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from core.errors import Unavailable
from core.events import Dispatch, decode_dispatch, dispatch_msg_id, encode_dispatch
from services.nats.connection import Connection, describe, unavailable
from services.nats.names import (
    ADVISORIES_STREAM,
    LOST_CONSUMER,
    MSG_ID,
    WORK_STREAM,
    decode_token,
    work_consumer,
    work_subject,
)
from services.ports import LostWork, WorkItem

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from services.nats.provisioning import Provisioner
    from services.nats.publisher import Publisher

__all__ = ["NatsWorkConsumer", "NatsWorkItem", "NatsWorkQueue", "hand_back"]

log = structlog.get_logger("cyclonetix.nats")

MAX_ACK_PENDING: Final = 10_000  # the cap on running tasks across all agents of a queue
MAX_WAITING: Final = 1024  # concurrent fetch requests (agents x concurrency)


class _MaxDeliveries(msgspec.Struct):
    """io.nats.jetstream.advisory.v1.max_deliver (only the fields we use)."""

    stream_seq: int
    deliveries: int


_max_deliveries_decoder = msgspec.json.Decoder(_MaxDeliveries)


class NatsWorkItem:
    """One delivery of a dispatch (`services.ports.WorkItem`)."""

    __slots__ = ("delivery", "dispatch", "msg", "pending")

    def __init__(self, msg: Msg, dispatch: Dispatch) -> None:
        self.msg = msg
        self.dispatch = dispatch
        try:
            metadata = msg.metadata
            self.delivery = int(metadata.num_delivered)
            self.pending = int(metadata.num_pending)
        except (ValueError, IndexError, AttributeError, TypeError, nats.errors.Error):
            self.delivery, self.pending = 1, 0

    @property
    def token(self) -> str:
        """The delivery's ack subject: `hand_back` naks it from another connection."""
        return self.msg.reply or ""

    async def ack(self) -> None:
        # A plain ack (no round trip): if it is lost, JetStream redelivers and the orchestrator
        # fences the duplicate attempt.
        try:
            await self.msg.ack()
        except nats.errors.Error as exc:
            raise Unavailable(f"cannot acknowledge a dispatch: {describe(exc)}") from exc

    async def nak(self) -> None:
        try:
            await self.msg.nak()
        except nats.errors.Error as exc:
            raise Unavailable(f"cannot hand back a dispatch: {describe(exc)}") from exc

    async def term(self) -> None:
        try:
            await self.msg.term()
        except nats.errors.Error as exc:
            raise Unavailable(f"cannot terminate a dispatch: {describe(exc)}") from exc

    async def in_progress(self) -> None:
        try:
            await self.msg.in_progress()
        except nats.errors.Error as exc:
            raise Unavailable(f"cannot extend a dispatch: {describe(exc)}") from exc


async def hand_back(url: str, tokens: Iterable[str], *, timeout: float = 10.0) -> int:
    """Hand deliveries back (nak) by their `NatsWorkItem.token`, from a connection of our own.

    For a process that did not receive them: the guardian of an agent that died
    (services.guardian). Keeps trying to connect for up to `timeout`; returns how many naks
    were sent and flushed. A nak of a delivery that was settled meanwhile changes nothing.
    """
    wanted = [t for t in tokens if t.startswith("$JS.ACK.")]
    if not wanted:
        return 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    conn: Connection | None = None
    while conn is None:
        try:
            conn = await Connection.open(
                url,
                name="cyclonetix-guardian",
                connect_timeout=max(0.5, min(2.0, deadline - loop.time())),
                publish_timeout=2.0,
                publish_deadline=timeout,
            )
        except Unavailable:
            if loop.time() + 0.5 >= deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        for token in wanted:
            await conn.nc.publish(token, b"-NAK")
        flush_timeout = max(0.5, deadline - loop.time())
        await conn.nc.flush(timeout=flush_timeout)  # type: ignore[arg-type]  # typed int
    except (TimeoutError, nats.errors.Error) as exc:
        raise Unavailable(f"cannot hand back dispatches: {describe(exc)}") from exc
    finally:
        await conn.close(grace=1.0)
    return len(wanted)


class NatsWorkConsumer:
    """A binding to the durable pull consumer of one queue (`services.ports.WorkConsumer`)."""

    def __init__(self, conn: Connection, queue: str, psub: JetStreamContext.PullSubscription):
        self._conn = conn
        self.queue = queue
        self._psub = psub

    async def fetch(self, count: int, timeout: float) -> list[WorkItem]:
        """Up to `count` items, waiting up to `timeout` for the first; [] when none came."""
        try:
            msgs = await self._psub.fetch(count, timeout=timeout)
        except TimeoutError:  # nats.errors.TimeoutError too: nothing came
            return []
        except nats.errors.Error as exc:
            raise Unavailable(f"cannot fetch from queue {self.queue}: {describe(exc)}") from exc
        items: list[WorkItem] = []
        for msg in msgs:
            try:
                d = decode_dispatch(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # A message no agent can read would be redelivered forever: drop it for good.
                log.error("agent.poison_message", queue=self.queue, error=str(exc))
                with contextlib.suppress(nats.errors.Error):
                    await msg.term()
                continue
            items.append(NatsWorkItem(msg, d))
        return items

    async def close(self) -> None:
        await self._conn.unsubscribe(self._psub)


class NatsWorkQueue:
    def __init__(self, conn: Connection, publisher: Publisher, provisioner: Provisioner) -> None:
        self._conn = conn
        self._publisher = publisher
        self._provisioner = provisioner

    async def dispatch(self, d: Dispatch) -> int:
        ack = await self._publisher.publish(
            work_subject(d.queue), encode_dispatch(d), {MSG_ID: dispatch_msg_id(d)}
        )
        return int(ack.seq)

    def dispatch_nowait(self, d: Dispatch) -> asyncio.Future[int]:
        return self._publisher.publish_nowait(
            work_subject(d.queue), encode_dispatch(d), {MSG_ID: dispatch_msg_id(d)}
        )

    async def consumer(
        self, queue: str, *, ack_wait: float = 30.0, max_deliver: int = 5
    ) -> NatsWorkConsumer:
        """Bind to the durable pull consumer of `queue`, shared by every agent of the queue.

        Each fetch hands a dispatch to one agent; an un-acked one comes back after `ack_wait`
        (call `in_progress()` while working), at most `max_deliver` times.
        """
        name = work_consumer(queue)
        cfg = ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=work_subject(queue),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=float(ack_wait),
            max_deliver=max_deliver,
            max_ack_pending=MAX_ACK_PENDING,
            max_waiting=MAX_WAITING,
        )
        with unavailable(f"the consumer of queue {queue}"):
            await self._provisioner.ensure_work_consumer(queue, cfg)
            psub = await self._conn.js.pull_subscribe_bind(consumer=name, stream=WORK_STREAM)
        self._conn.subs.add(psub)
        return NatsWorkConsumer(self._conn, queue, psub)

    async def lost(self) -> AsyncIterator[LostWork]:
        """Dispatches whose deliveries ran out (`max_deliver`).

        At least once, shared by all orchestrators: when the caller asks for the next one, the
        stranded work message is deleted and the advisory acknowledged.
        """
        conn = self._conn
        js = conn.js
        with unavailable("the lost-dispatch consumer"):
            psub = await js.pull_subscribe_bind(consumer=LOST_CONSUMER, stream=ADVISORIES_STREAM)
        conn.subs.add(psub)
        try:
            while not conn.closing:
                try:
                    msgs = await psub.fetch(16, timeout=5)
                except TimeoutError:  # nats.errors.TimeoutError, or asyncio's from deeper in fetch
                    continue
                except nats.errors.Error as exc:
                    if conn.closed:
                        return
                    if conn.throttle.check("lost_dispatches") is not None:
                        log.warning("nats.lost_dispatches_failed", error=describe(exc))
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    found = await self._read_lost(msg)
                    if found is None:
                        continue
                    lost, stream_seq = found
                    yield lost
                    with unavailable("a delete of a lost dispatch"):
                        with contextlib.suppress(nats.js.errors.NotFoundError):
                            await js.delete_msg(WORK_STREAM, stream_seq)
                        await msg.ack()
        finally:
            await conn.unsubscribe(psub)

    async def _read_lost(self, msg: Msg) -> tuple[LostWork, int] | None:
        """The dispatch an advisory is about and its stream sequence; None (the advisory is
        settled here) when it is gone or unreadable."""
        with unavailable("a read of a lost dispatch"):
            try:
                advisory = _max_deliveries_decoder.decode(msg.data)
                raw = await self._conn.js.get_msg(WORK_STREAM, seq=advisory.stream_seq)
                dispatch = decode_dispatch(raw.data or b"")
            except nats.js.errors.NotFoundError:
                await msg.ack()  # acknowledged late after all, or already handled
                return None
            except msgspec.DecodeError as exc:
                log.warning("nats.undecodable_lost_dispatch", error=str(exc))
                await msg.term()
                return None
        return LostWork(dispatch=dispatch, deliveries=advisory.deliveries), advisory.stream_seq

    async def depths(self) -> dict[str, int]:
        """Dispatches waiting to be delivered, per queue (in-flight ones not counted)."""
        js = self._conn.js
        with unavailable("a work stream info request"):
            info = await js.stream_info(WORK_STREAM, subjects_filter="cx.work.*")
            consumers = await js.consumers_info(WORK_STREAM)
        depths = {
            decode_token(subject.split(".", 2)[2]): count
            for subject, count in (info.state.subjects or {}).items()
        }
        for ci in consumers:
            filt = ci.config.filter_subject or ""
            if ci.name.startswith("work_") and filt.startswith("cx.work."):
                depths[decode_token(filt.split(".", 2)[2])] = ci.num_pending or 0
        return depths
