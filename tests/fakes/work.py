"""The work queue in memory, modelled on JetStream's work-queue stream with one durable pull
consumer per queue shared by every agent of the queue.

What the roles rely on, and what this keeps:
  - dispatches are deduplicated by `dispatch_msg_id` within the duplicate window (also after
    the message was acknowledged and removed), returning the original sequence;
  - an item is delivered to one fetcher at a time; redeliveries go before new messages;
  - an item not settled within `ack_wait` (on the real event-loop clock) comes back with its
    delivery count increased; `in_progress` restarts that clock; `nak` hands it back now;
  - when an item would be delivered again after `max_deliver` deliveries, it is not: it goes to
    the lost-work feed instead, and stays stored until a `lost()` reader has handled it. As on
    nats-server, this is noticed when someone next pulls the queue — or already when the ack
    timer fires if max_deliver is 1 (see `SharedConsumer._expired`);
  - `ack` and `term` remove the message (work-queue retention); an undecodable message is
    terminated by the consumer and never handed out.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import structlog

from core.events import Dispatch, decode_dispatch, dispatch_msg_id, encode_dispatch
from services.ports import LostWork, WorkItem
from tests.fakes._sync import Changed

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from tests.fakes.backplane import MemoryBackplane
    from tests.fakes.clock import Clock
    from tests.fakes.faults import Faults

__all__ = ["MemoryWorkConsumer", "MemoryWorkItem", "MemoryWorkQueue", "WorkStore"]

log = structlog.get_logger("cyclonetix.fakes")


@dataclass(frozen=True, slots=True)
class WorkMessage:
    seq: int
    queue: str
    data: bytes


class _Outstanding:
    """A delivery waiting to be settled."""

    __slots__ = ("timer", "token")

    def __init__(self, token: int, timer: asyncio.TimerHandle) -> None:
        self.token = token
        self.timer = timer


class SharedConsumer:
    """The durable consumer of one queue (`work_<queue>`): its state is the server's, so every
    binding to it shares the deliveries."""

    def __init__(self, store: WorkStore, queue: str, ack_wait: float, max_deliver: int) -> None:
        self.store = store
        self.queue = queue
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        # Deliver policy "all": every message of the queue already stored is still to come.
        self.new: collections.deque[int] = collections.deque(
            m.seq for m in store.messages.values() if m.queue == queue
        )
        self.redeliver: collections.deque[int] = collections.deque()
        self.deliveries: dict[int, int] = {}  # seq -> deliveries so far
        self.outstanding: dict[int, _Outstanding] = {}
        self.available = Changed()
        self._tokens = itertools.count(1)

    def num_pending(self) -> int:
        """Messages never delivered yet (JetStream's num_pending: redeliveries not counted)."""
        return sum(1 for seq in self.new if seq in self.store.messages)

    def take(self) -> tuple[int, int, int, int] | None:
        """The next delivery as (seq, token, delivery count, pending after it), or None."""
        messages = self.store.messages
        while self.redeliver:
            seq = self.redeliver.popleft()
            if seq not in messages or seq in self.outstanding:
                continue
            if self.deliveries.get(seq, 0) >= self.max_deliver:
                self.store.lose(seq, self.deliveries.pop(seq))
                continue
            return self._deliver(seq)
        while self.new:
            seq = self.new.popleft()
            if seq in messages:
                return self._deliver(seq)
        return None

    def _deliver(self, seq: int) -> tuple[int, int, int, int]:
        delivery = self.deliveries.get(seq, 0) + 1
        self.deliveries[seq] = delivery
        token = next(self._tokens)
        self.outstanding[seq] = _Outstanding(token, self._timer(seq, token))
        return seq, token, delivery, self.num_pending()

    def _timer(self, seq: int, token: int) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_later(self.ack_wait, self._expired, seq, token)

    def _current(self, seq: int, token: int) -> _Outstanding | None:
        out = self.outstanding.get(seq)
        return out if out is not None and out.token == token else None

    def _expired(self, seq: int, token: int) -> None:
        if self._current(seq, token) is None:
            return
        del self.outstanding[seq]
        # nats-server checks max_deliver when the ack timer fires, but there it counts one
        # delivery short once a message was redelivered (`consumer.deliveryCount` reads the
        # redelivery count): so at expiry it notices only max_deliver == 1; otherwise the next
        # pull of the queue does (`getNextMsg`, see `take`). Observed on nats-server 2.15.1.
        if max(self.deliveries[seq] - 1, 1) >= self.max_deliver:
            self.store.lose(seq, self.deliveries.pop(seq))
            return
        self._hand_back(seq)

    def _hand_back(self, seq: int) -> None:
        self.redeliver.append(seq)
        self.available.notify()

    def settle(self, seq: int) -> None:
        """Acked or terminated (by any delivery of it): the message is gone for good."""
        out = self.outstanding.pop(seq, None)
        if out is not None:
            out.timer.cancel()
        self.deliveries.pop(seq, None)
        self.store.remove(seq)

    def nak(self, seq: int, token: int) -> None:
        out = self._current(seq, token)
        if out is not None:
            out.timer.cancel()
            del self.outstanding[seq]
            self._hand_back(seq)

    def in_progress(self, seq: int, token: int) -> None:
        out = self._current(seq, token)
        if out is not None:
            out.timer.cancel()
            out.timer = self._timer(seq, token)


class WorkStore:
    """The server side: what CX_WORK holds, its consumers and the lost-work feed."""

    def __init__(self, clock: Clock, duplicate_window: float) -> None:
        self.clock = clock
        self.duplicate_window = duplicate_window
        self.messages: dict[int, WorkMessage] = {}  # stored (not yet acked, termed or lost+handled)
        self.consumers: dict[str, SharedConsumer] = {}
        self.lost: collections.deque[tuple[int, int]] = collections.deque()  # (seq, deliveries)
        self.lost_changed = Changed()
        self._seqs = itertools.count(1)
        self._ids: dict[str, tuple[int, float]] = {}

    def store(self, queue: str, data: bytes, mid: str | None) -> int:
        if mid is not None and (hit := self._ids.get(mid)) is not None:
            seq, stored_at = hit
            if self.clock.now() - stored_at <= self.duplicate_window:
                return seq
        seq = next(self._seqs)
        self.messages[seq] = WorkMessage(seq, queue, data)
        if mid is not None:
            self._ids[mid] = (seq, self.clock.now())
        consumer = self.consumers.get(queue)
        if consumer is not None:
            consumer.new.append(seq)
            consumer.available.notify()
        return seq

    def remove(self, seq: int) -> None:
        self.messages.pop(seq, None)

    def lose(self, seq: int, deliveries: int) -> None:
        self.lost.append((seq, deliveries))
        self.lost_changed.notify()

    def consumer(self, queue: str, ack_wait: float, max_deliver: int) -> SharedConsumer:
        shared = self.consumers.get(queue)
        if shared is None:
            shared = self.consumers[queue] = SharedConsumer(self, queue, ack_wait, max_deliver)
        else:  # binding again with another config updates the durable consumer in place
            shared.ack_wait, shared.max_deliver = ack_wait, max_deliver
        return shared

    def depths(self) -> dict[str, int]:
        out: dict[str, int] = collections.Counter(m.queue for m in self.messages.values())
        for queue, shared in self.consumers.items():
            out[queue] = shared.num_pending()
        return dict(out)


class MemoryWorkItem:
    """`services.ports.WorkItem`: one delivery of one dispatch."""

    def __init__(
        self,
        conn: MemoryBackplane,
        shared: SharedConsumer,
        faults: Faults,
        dispatch: Dispatch,
        seq: int,
        token: int,
        delivery: int,
        pending: int,
    ) -> None:
        self._conn = conn
        self._shared = shared
        self._faults = faults
        self._dispatch = dispatch
        self._seq = seq
        self._token = token
        self._delivery = delivery
        self._pending = pending

    @property
    def dispatch(self) -> Dispatch:
        return self._dispatch

    @property
    def delivery(self) -> int:
        return self._delivery

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def token(self) -> str:
        return ""  # in memory: no other process can reach it

    async def ack(self) -> None:
        self._conn.check_open()
        if not self._faults.take("dropped_work_acks"):
            self._shared.settle(self._seq)
        await asyncio.sleep(0)

    async def nak(self) -> None:
        self._conn.check_open()
        self._shared.nak(self._seq, self._token)
        await asyncio.sleep(0)

    async def term(self) -> None:
        self._conn.check_open()
        self._shared.settle(self._seq)
        await asyncio.sleep(0)

    async def in_progress(self) -> None:
        self._conn.check_open()
        self._shared.in_progress(self._seq, self._token)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        d = self._dispatch
        return f"<MemoryWorkItem {d.run_id}/{d.task_id}/{d.attempt} delivery={self._delivery}>"


class MemoryWorkConsumer:
    """`services.ports.WorkConsumer`: a binding to the shared consumer of one queue."""

    def __init__(self, conn: MemoryBackplane, shared: SharedConsumer, faults: Faults) -> None:
        self._conn = conn
        self._shared = shared
        self._faults = faults
        self._closed = False

    async def fetch(self, count: int, timeout: float) -> list[WorkItem]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        shared = self._shared
        while True:
            self._conn.check_open()
            items: list[WorkItem] = []
            while len(items) < count and (taken := shared.take()) is not None:
                seq, token, delivery, pending = taken
                try:
                    dispatch = decode_dispatch(shared.store.messages[seq].data)
                except msgspec.DecodeError as exc:
                    log.warning("fake.undecodable_dispatch", queue=shared.queue, error=str(exc))
                    shared.settle(seq)  # terminated: never delivered again
                    continue
                items.append(
                    MemoryWorkItem(
                        self._conn, shared, self._faults, dispatch, seq, token, delivery, pending
                    )
                )
            if items:
                await asyncio.sleep(0)
                return items
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closed:
                return []
            await self._conn.wait(shared.available.future(), timeout=remaining)

    async def close(self) -> None:
        # Deliveries not settled stay with the shared consumer: they come back after ack_wait.
        self._closed = True
        await asyncio.sleep(0)


class MemoryWorkQueue:
    """`services.ports.WorkQueue` over a `WorkStore`, through one connection."""

    def __init__(self, conn: MemoryBackplane, store: WorkStore, faults: Faults) -> None:
        self._conn = conn
        self._store = store
        self._faults = faults

    def _publish(self, queue: str, data: bytes, mid: str) -> int:
        if self._faults.take("failing_dispatches"):
            raise self._faults.unavailable(f"dispatch to queue {queue!r} was not acknowledged")
        return self._store.store(queue, data, mid)

    async def dispatch(self, d: Dispatch) -> int:
        self._conn.check_open()
        seq = self._publish(d.queue, encode_dispatch(d), dispatch_msg_id(d))
        await asyncio.sleep(0)
        return seq

    def dispatch_nowait(self, d: Dispatch) -> asyncio.Future[int]:
        data, mid = encode_dispatch(d), dispatch_msg_id(d)
        return self._conn.publish_nowait(lambda: self._publish(d.queue, data, mid))

    async def consumer(
        self, queue: str, *, ack_wait: float = 30.0, max_deliver: int = 5
    ) -> MemoryWorkConsumer:
        self._conn.check_open()
        if self._faults.take("failing_consumer_binds"):
            raise self._faults.unavailable(f"the consumer of queue {queue} did not answer")
        shared = self._store.consumer(queue, float(ack_wait), max_deliver)
        await asyncio.sleep(0)
        return MemoryWorkConsumer(self._conn, shared, self._faults)

    async def lost(self) -> AsyncGenerator[LostWork, None]:
        store = self._store
        while not self._conn.ended():
            if not store.lost:
                await self._conn.wait(store.lost_changed.future())
                continue
            seq, deliveries = store.lost.popleft()
            message = store.messages.get(seq)
            if message is None:
                continue  # acknowledged late after all, or already handled
            try:
                dispatch = decode_dispatch(message.data)
            except msgspec.DecodeError as exc:
                log.warning("fake.undecodable_lost_dispatch", error=str(exc))
                store.remove(seq)
                continue
            try:
                yield LostWork(dispatch=dispatch, deliveries=deliveries)
            except BaseException:
                # Not handled (the reader stopped at it): another reader gets it. (JetStream
                # redelivers the advisory after its ack_wait; here it is at once.)
                store.lost.appendleft((seq, deliveries))
                store.lost_changed.notify()
                raise
            store.remove(seq)  # the next one was asked for: this one was handled

    async def depths(self) -> dict[str, int]:
        self._conn.check_open()
        await asyncio.sleep(0)
        return self._store.depths()
