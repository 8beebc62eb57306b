"""The in-memory backplane: a `MemoryServer` (what a NATS server holds) and `MemoryBackplane`
connections to it (what a role is given).

Several connections to one server behave like several processes on one NATS: they share the
event log, the work queues and their consumers, the buckets and the cancel signals; closing one
ends its own readers and leaves the others running.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from core.errors import CyclonetixError, Unavailable
from tests.fakes._sync import Changed
from tests.fakes.clock import Clock
from tests.fakes.events import EventStore, MemoryEventLog
from tests.fakes.faults import Faults
from tests.fakes.kv import (
    Bucket,
    MemoryAgentRegistry,
    MemoryAuditLog,
    MemoryAuthStore,
    MemoryCheckpoints,
    MemoryDefinitionsStore,
    MemoryLeases,
)
from tests.fakes.objects import MemorySnapshots, ObjectStore
from tests.fakes.signals import CancelHub, LogStream, MemoryCancelSignals, MemoryLogStore
from tests.fakes.work import MemoryWorkQueue, WorkStore

if TYPE_CHECKING:
    from services.ports import Backplane

__all__ = [
    "AGENT_TTL",
    "DUPLICATE_WINDOW",
    "LEASE_TTL",
    "MAX_PAYLOAD",
    "MemoryBackplane",
    "MemoryServer",
]

log = structlog.get_logger("cyclonetix.fakes")

# The real adapter's settings (services/nats/).
LEASE_TTL = 6.0
MAX_PAYLOAD = 8 * 1024 * 1024  # what services.embedded_nats configures (NATS's default: 1 MiB)
AGENT_TTL = 30.0
DUPLICATE_WINDOW = 300.0

_server_ids = itertools.count(1)


class MemoryServer:
    """Everything a NATS server would hold for Cyclonetix, in memory.

    `clock` drives the time-to-live rules (leases, agents, duplicate window): advance it to
    expire a lease at once. Delivery timing (ack_wait) runs on the event loop's real clock.
    `faults` injects failures; `inject_event_bytes` / `inject_dispatch_bytes` store raw bytes
    the way a foreign or broken publisher would.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        lease_ttl: float = LEASE_TTL,
        agent_ttl: float = AGENT_TTL,
        duplicate_window: float = DUPLICATE_WINDOW,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self.id = next(_server_ids)
        self.max_payload = max_payload  # the largest message it stores (definitions check it)
        self.clock = clock or Clock()
        self.faults = Faults()
        self.events = EventStore(self.clock, duplicate_window)
        self.work = WorkStore(self.clock, duplicate_window)
        self.cancels = CancelHub()
        self.logs = LogStream()
        self.definitions = Bucket(self.clock)
        self.agents = Bucket(self.clock, agent_ttl)
        self.auth = MemoryAuthStore()
        self.audit = MemoryAuditLog()
        self.leases = Bucket(self.clock, lease_ttl)
        self.checkpoints = Bucket(self.clock)
        self.snapshots = ObjectStore()

    @property
    def url(self) -> str:
        return f"memory://server-{self.id}"

    def connect(self, name: str = "memory") -> MemoryBackplane:
        """A new connection, as another process would have."""
        return MemoryBackplane(self, name=name)

    def inject_event_bytes(self, run_id: str, data: bytes, msg_id: str | None = None) -> int:
        """Store `data` on a run's subject, without a message id unless `msg_id` is given
        (readers must skip what does not decode)."""
        return self.events.store(run_id, data, msg_id)

    def inject_dispatch_bytes(self, queue: str, data: bytes) -> int:
        """Store `data` on a work queue without a message id (consumers must terminate it)."""
        return self.work.store(queue, data, None)


class MemoryBackplane:
    """`services.ports.Backplane` in memory: every port over one connection to a server."""

    def __init__(self, server: MemoryServer | None = None, *, name: str = "memory") -> None:
        self.server = server if server is not None else MemoryServer()
        self.name = name
        faults = self.server.faults
        self._events = MemoryEventLog(self, self.server.events, faults)
        self._work = MemoryWorkQueue(self, self.server.work, faults)
        self._cancels = MemoryCancelSignals(self, self.server.cancels)
        self._logs = MemoryLogStore(self, self.server.logs)
        self._definitions = MemoryDefinitionsStore(
            self, self.server.definitions, self.server.max_payload
        )
        self._agents = MemoryAgentRegistry(self, self.server.agents)
        self._leases = MemoryLeases(self, self.server.leases, faults)
        self._checkpoints = MemoryCheckpoints(self, self.server.checkpoints)
        self._snapshots = MemorySnapshots(self, self.server.snapshots, faults)
        self._closed = False
        self._closing = Changed()
        self._outbox: collections.deque[tuple[Callable[[], int], asyncio.Future[int]]] = (
            collections.deque()
        )
        self._inflight: set[asyncio.Future[int]] = set()
        self._draining = False

    # -- the ports ------------------------------------------------------------------------------

    @property
    def events(self) -> MemoryEventLog:
        return self._events

    @property
    def work(self) -> MemoryWorkQueue:
        return self._work

    @property
    def cancels(self) -> MemoryCancelSignals:
        return self._cancels

    @property
    def logs(self) -> MemoryLogStore:
        return self._logs

    @property
    def definitions(self) -> MemoryDefinitionsStore:
        return self._definitions

    @property
    def agents(self) -> MemoryAgentRegistry:
        return self._agents

    @property
    def auth(self) -> MemoryAuthStore:
        return self.server.auth

    @property
    def audit(self) -> MemoryAuditLog:
        return self.server.audit

    @property
    def leases(self) -> MemoryLeases:
        return self._leases

    @property
    def checkpoints(self) -> MemoryCheckpoints:
        return self._checkpoints

    @property
    def snapshots(self) -> MemorySnapshots:
        return self._snapshots

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def url(self) -> str:
        return self.server.url

    async def close(self) -> None:
        """Store what was pipelined, then end every reader of this connection."""
        if self._closed:
            return
        self._drain()
        self._closed = True
        self._closing.notify()
        await asyncio.sleep(0)

    async def __aenter__(self) -> MemoryBackplane:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what the ports share -------------------------------------------------------------------

    def check_open(self) -> None:
        if self._closed:
            raise Unavailable(f"connection {self.name!r} to {self.url} is closed")

    def ended(self, stop: asyncio.Event | None = None) -> bool:
        """True once this connection closed or `stop` was set: readers return."""
        return self._closed or (stop is not None and stop.is_set())

    async def wait(
        self,
        change: asyncio.Future[None],
        *,
        stop: asyncio.Event | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Wait for `change`: False when the connection closed, `stop` was set or `timeout`
        passed first."""
        if self.ended(stop):
            return False
        waits: set[asyncio.Future[Any]] = {change, self._closing.future()}
        stopper: asyncio.Task[bool] | None = None
        if stop is not None:
            stopper = asyncio.ensure_future(stop.wait())
            waits.add(stopper)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()
        return change.done() and not self.ended(stop)

    def publish_nowait(self, store: Callable[[], int]) -> asyncio.Future[int]:
        """Pipelined publish: `store` runs soon, in call order with the other pipelined
        publishes of this connection; the future gives its sequence or its error."""
        self.check_open()
        loop = asyncio.get_running_loop()
        result: asyncio.Future[int] = loop.create_future()
        self._outbox.append((store, result))
        self._inflight.add(result)
        result.add_done_callback(self._published)
        if not self._draining:
            self._draining = True
            loop.call_soon(self._drain)
        return result

    def _drain(self) -> None:
        self._draining = False
        while self._outbox:
            store, result = self._outbox.popleft()
            if result.done():
                continue  # cancelled by its caller
            try:
                seq = store()
            except CyclonetixError as exc:
                result.set_exception(exc)
            else:
                result.set_result(seq)

    def _published(self, result: asyncio.Future[int]) -> None:
        self._inflight.discard(result)
        if not result.cancelled() and (exc := result.exception()) is not None:
            log.error("fake.publish_failed", error=str(exc))

    async def flush(self) -> None:
        """Wait for every pipelined publish issued so far; raise the first failure."""
        pending = list(self._inflight)
        if not pending:
            return
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result


def _satisfies_the_port(bp: MemoryBackplane) -> Backplane:
    return bp  # mypy checks MemoryBackplane against the Backplane protocol here
