"""Reading streams in order: `replay` (what is stored, then stop) and `follow` (stored, then
live), both through `Reader`, an ordered push consumer of our own; and `kv_snapshot`, the latest
value of every key of a bucket in one bounded read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from core.errors import Unavailable
from services.nats.connection import RETRYABLE, describe
from services.nats.names import KV_OPERATION, MARKER_REASON
from services.retrying import backoff

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from services.nats.connection import Connection

__all__ = ["Delivery", "Reader", "follow", "kv_snapshot", "replay"]

log = structlog.get_logger("cyclonetix.nats")

Delivery = tuple[int, int, "Msg"]  # (stream sequence, messages pending after it, message)
_STATUS = "Status"
_LAST_CONSUMER = "Nats-Last-Consumer"
_CONSUMER_STALLED = "Nats-Consumer-Stalled"


async def replay(
    conn: Connection,
    stream: str,
    subject: str | tuple[str, ...],
    *,
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
) -> AsyncIterator[Delivery]:
    """Everything currently stored on `subject` (or on any of several that do not overlap),
    then stop (a bounded read)."""
    reader = Reader(conn, stream, subject, deliver_policy=deliver_policy, bounded=True)
    async for item in reader:
        yield item


async def follow(
    conn: Connection,
    stream: str,
    subject: str | tuple[str, ...],
    from_seq: int = 1,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[Delivery]:
    """Stored messages from `from_seq`, then live ones, until `stop` or the connection closes."""
    policy = DeliverPolicy.BY_START_SEQUENCE if from_seq > 1 else DeliverPolicy.ALL
    reader = Reader(conn, stream, subject, deliver_policy=policy, start_seq=from_seq, stop=stop)
    async for item in reader:
        yield item


async def kv_snapshot(conn: Connection, bucket: str, pattern: str = ">") -> dict[str, Msg]:
    """The latest message of every live key of `bucket` matching `pattern` (one bounded read;
    deleted, purged and expired keys are left out)."""
    prefix = f"$KV.{bucket}."
    entries: dict[str, Msg] = {}
    async for _, _, msg in replay(
        conn, f"KV_{bucket}", prefix + pattern, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
    ):
        headers = msg.headers or {}
        if headers.get(KV_OPERATION) or headers.get(MARKER_REASON):
            continue  # a delete, purge or expiry marker
        entries[msg.subject[len(prefix) :]] = msg
    return entries


class _FlowControl:
    __slots__ = ("reply",)

    def __init__(self, reply: str) -> None:
        self.reply = reply


_CLOSED: Final = object()


def _ack_fields(reply: str) -> tuple[int, int, int]:
    """(stream seq, consumer seq, pending) from a JetStream delivery's reply subject.

    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>` (9 tokens) or the
    v2 form with domain and account hash after `$JS.ACK` (12 tokens).
    """
    t = reply.split(".")
    if len(t) == 9:
        return int(t[5]), int(t[6]), int(t[8])
    return int(t[7]), int(t[8]), int(t[10])


class Reader:
    """An ordered, ephemeral, AckNone push consumer read through a callback subscription.

    Why not nats-py's own readers: `PullSubscription.fetch` and ordered-consumer iteration
    create an asyncio task per message (about 90 us each on the dev box); a callback into a
    queue costs a few us, which makes a 3,000-event history ~10x faster. What the ordered
    consumer gave us is kept: flow control (answered only once the caller consumed what came
    before, so memory stays bounded), gap detection by consumer sequence, and re-creation from
    the last seen stream sequence after a gap, two missed heartbeats or a reconnect.

    `bounded=True` stops once caught up (num_pending == 0); otherwise it follows forever.
    """

    def __init__(
        self,
        conn: Connection,
        stream: str,
        subject: str | tuple[str, ...],
        *,
        deliver_policy: DeliverPolicy,
        start_seq: int = 1,
        bounded: bool = False,
        heartbeat: float = 2.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._conn = conn
        self._stop = stop
        self._stream = stream
        # One subject, or several that do not overlap (a consumer's `filter_subjects`).
        self._filters = (subject,) if isinstance(subject, str) else subject
        self._subject = ", ".join(self._filters)  # (for messages)
        self._policy = deliver_policy
        self._start_seq = start_seq
        self._bounded = bounded
        self._heartbeat = heartbeat
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._generation = 0
        self._sub: Any = None
        self._consumer: str | None = None
        self._next_dseq = 1
        self._last_sseq = start_seq - 1
        self._active = True
        self._resetting = False
        self._watchdog: asyncio.Task[None] | None = None
        self._ended = asyncio.Event()  # stop was set or close() called
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        conn = self._conn
        if conn.closed or (self._stop is not None and self._stop.is_set()):
            return
        conn.readers.add(self)
        loop = asyncio.get_running_loop()
        stop_waiter: asyncio.Task[bool] | None = None
        if self._stop is not None:
            stop_waiter = loop.create_task(self._stop.wait())
            stop_waiter.add_done_callback(lambda _: self._end())
        try:
            pending = await self._first_create()
            if pending is None or (self._bounded and pending == 0):
                return
            self._watchdog = loop.create_task(self._watch())
            queue = self._queue
            while True:
                item = await queue.get()
                if type(item) is tuple:
                    yield item
                    if self._bounded and item[1] == 0:
                        return
                elif isinstance(item, _FlowControl):
                    # Everything delivered before this request has been consumed: let the
                    # server send the next window.
                    with contextlib.suppress(Exception):
                        await conn.nc.publish(item.reply)
                elif item is _CLOSED:
                    return
                else:
                    raise item  # from the watchdog: a bounded read stalled
        finally:
            if stop_waiter is not None:
                stop_waiter.cancel()
            conn.readers.discard(self)
            await self.close()

    async def _first_create(self) -> int | None:
        """`_create`, abandoned when the reader is ended meanwhile (a request on a closing
        connection would wait out its timeout). None: ended. A following reader keeps trying
        while NATS is unreachable; a bounded one raises Unavailable."""
        loop = asyncio.get_running_loop()
        delays = backoff(0.1, cap=2.0)
        while True:
            creating = loop.create_task(self._create())
            if not await self._until_ended(creating):
                return None
            exc = creating.exception()
            if exc is None:
                return creating.result()
            if self._ended.is_set() or self._conn.closed:
                return None
            if not isinstance(exc, RETRYABLE):
                raise exc
            if self._bounded:
                raise Unavailable(
                    f"NATS did not answer a read of {self._subject}: {describe(exc)}"
                ) from exc
            if not await self._until_ended(loop.create_task(asyncio.sleep(next(delays)))):
                return None

    async def _until_ended(self, task: asyncio.Task[Any]) -> bool:
        """Wait for `task` unless the reader ends first (then cancel it); True if it finished."""
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # lets _create drop its half-made subscription
        return not task.cancelled()

    def _end(self) -> None:
        if not self._ended.is_set():
            self._ended.set()
            self._queue.put_nowait(_CLOSED)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._end()
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._drop_consumer(self._sub, self._consumer)

    async def _create(self) -> int:
        """Subscribe a fresh inbox, then create the consumer delivering to it."""
        conn = self._conn
        self._generation += 1
        generation = self._generation
        inbox = conn.nc.new_inbox()

        async def on_msg(msg: Msg) -> None:
            if generation == self._generation:
                await self._on_msg(msg)

        sub = await conn.nc.subscribe(inbox, cb=on_msg, pending_bytes_limit=256 * 1024 * 1024)
        name = conn.new_name()
        by_seq = self._policy == DeliverPolicy.BY_START_SEQUENCE
        cfg = ConsumerConfig(
            name=name,
            deliver_subject=inbox,
            deliver_policy=self._policy,
            opt_start_seq=self._last_sseq + 1 if by_seq else None,
            ack_policy=AckPolicy.NONE,
            filter_subject=self._filters[0] if len(self._filters) == 1 else None,
            filter_subjects=list(self._filters) if len(self._filters) > 1 else None,
            flow_control=True,
            idle_heartbeat=self._heartbeat,
            inactive_threshold=max(30.0, 5 * self._heartbeat),  # server cleans up after us
            mem_storage=True,
            num_replicas=1,
        )
        old_sub, old_consumer = self._sub, self._consumer
        self._sub, self._consumer = sub, name
        self._next_dseq = 1
        self._active = True
        try:
            info = await conn.js.add_consumer(self._stream, cfg)
        except BaseException:
            await self._drop_consumer(sub, None)
            raise
        await self._drop_consumer(old_sub, old_consumer)
        return info.num_pending or 0

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers is not None and _STATUS in headers and not msg.data:
            self._active = True
            if msg.reply:  # flow-control request: answered in order, by the iterator
                self._queue.put_nowait(_FlowControl(msg.reply))
                return
            if stalled := headers.get(_CONSUMER_STALLED):  # a lost flow-control reply
                await self._conn.nc.publish(stalled)
            last = headers.get(_LAST_CONSUMER)
            if last is not None and int(last) != self._next_dseq - 1:
                self._reset("missed messages (heartbeat)")
            return
        try:
            sseq, dseq, pending = _ack_fields(msg.reply)
        except (ValueError, IndexError):
            log.warning("nats.unexpected_delivery", subject=msg.subject, reply=msg.reply)
            return
        self._active = True
        if dseq != self._next_dseq:
            self._reset(f"gap: consumer sequence {dseq}, expected {self._next_dseq}")
            return
        self._next_dseq = dseq + 1
        self._last_sseq = sseq
        if self._policy != DeliverPolicy.LAST_PER_SUBJECT:
            self._policy = DeliverPolicy.BY_START_SEQUENCE  # a re-creation resumes after sseq
        self._queue.put_nowait((sseq, pending, msg))

    async def _watch(self) -> None:
        """Re-create the consumer when two heartbeats in a row were missed; a bounded read
        that makes no progress for the publish deadline fails instead of hanging."""
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while not self._closed:
            await asyncio.sleep(2 * self._heartbeat)
            if self._active:
                last_progress = loop.time()
            elif self._bounded and loop.time() - last_progress > self._conn.publish_deadline:
                self._queue.put_nowait(
                    Unavailable(f"NATS stopped answering while reading {self._subject}")
                )
                return
            elif not self._resetting:
                self._reset("no heartbeat")
            self._active = False

    def reset(self) -> None:
        """Called after a reconnect: the server may have lost the (memory) consumer."""
        self._reset("reconnected")

    def _reset(self, reason: str) -> None:
        if self._closed or self._resetting:
            return
        self._resetting = True
        self._generation += 1  # drop whatever the old consumer still delivers
        log.debug("nats.reader_reset", subject=self._subject, reason=reason, seq=self._last_sseq)
        self._conn.spawn(self._recreate())

    async def _recreate(self) -> None:
        delays = backoff(0.1, cap=2.0)
        try:
            while not self._closed and not self._conn.closing:
                try:
                    await self._check_stream_not_reset()
                    await self._create()
                    return
                except Exception as exc:  # noqa: BLE001 - server restarting: keep trying
                    if self._conn.nc.is_closed:
                        self._queue.put_nowait(Unavailable(f"NATS closed: {describe(exc)}"))
                        return
                    await asyncio.sleep(next(delays))
        finally:
            self._resetting = False

    async def _check_stream_not_reset(self) -> None:
        """A stream that lost its store restarts at sequence 1: follow it from the start
        rather than waiting for sequences we have already seen (loudly: data was lost)."""
        if self._policy != DeliverPolicy.BY_START_SEQUENCE:
            return
        info = await self._conn.js.stream_info(self._stream)
        if info.state.last_seq < self._last_sseq:
            log.error(
                "nats.stream_reset",
                stream=self._stream,
                last_seen=self._last_sseq,
                stream_last=info.state.last_seq,
            )
            self._policy = DeliverPolicy.ALL
            self._last_sseq = 0

    async def _drop_consumer(self, sub: Any, consumer: str | None) -> None:
        nc = self._conn.nc
        if nc.is_closed:
            return
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if consumer is not None and nc.is_connected:
            with contextlib.suppress(Exception):  # best effort: inactive_threshold cleans up
                await self._conn.js.delete_consumer(self._stream, consumer)
