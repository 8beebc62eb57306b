"""What a contract test is given: connections to one backend, plus the few things only the
test itself may do to that backend (store raw bytes, let leases expire).

Each port's contract is an abstract class (`...Contract`, not collected by pytest) written
against `Harness`; it is collected twice, through `OnMemory` (tests.fakes) and `OnNats` (a real
nats-server per test, connected through `services.nats.connect`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pytest

from core.events import (
    Dispatch,
    RunScheduled,
    RunSucceeded,
    TaskQueued,
    TaskStarted,
    TaskSucceeded,
)
from services.ports import Backplane, WorkConsumer, WorkItem
from tests.fakes import LEASE_TTL, MemoryServer
from tests.waiting import eventually

if TYPE_CHECKING:
    from services.embedded_nats import EmbeddedNats

__all__ = [
    "NOW",
    "Harness",
    "OnMemory",
    "OnNats",
    "aclose",
    "dispatch",
    "fetch_n",
    "queued",
    "run_succeeded",
    "scheduled",
    "started",
    "succeeded",
    "take",
]

T = TypeVar("T")
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Harness(abc.ABC):
    """One backend under test; closes every connection it made at the end of the test."""

    name: str
    # Short ack_wait for redelivery tests, and how long "nothing comes" is watched: the fake
    # is exact to the event loop's clock; a real server needs some slack.
    ack_wait: float
    quiet: float
    max_payload: int  # the largest message the server stores, in bytes

    def __init__(self) -> None:
        self._opened: list[Backplane] = []

    async def connect(self, name: str = "contract") -> Backplane:
        """A new connection to the backend (another process would have its own)."""
        bp = await self._connect(name)
        self._opened.append(bp)
        return bp

    @abc.abstractmethod
    async def _connect(self, name: str) -> Backplane: ...

    @abc.abstractmethod
    async def inject_event_bytes(self, run_id: str, data: bytes) -> None:
        """Store `data` on the run's subject of the event log, as a foreign writer could."""

    @abc.abstractmethod
    async def inject_dispatch_bytes(self, queue: str, data: bytes) -> None:
        """Store `data` on a work queue, as a foreign writer could."""

    @abc.abstractmethod
    async def expire_lease(self, bp: Backplane, name: str) -> None:
        """Return once lease `name`, no longer renewed, has expired."""

    async def close(self) -> None:
        for bp in reversed(self._opened):
            await bp.close()


class MemoryHarness(Harness):
    name = "memory"
    ack_wait = 0.05
    quiet = 0.15

    def __init__(self) -> None:
        super().__init__()
        self.server = MemoryServer()
        self.max_payload = self.server.max_payload

    async def _connect(self, name: str) -> Backplane:
        return self.server.connect(name)

    async def inject_event_bytes(self, run_id: str, data: bytes) -> None:
        self.server.inject_event_bytes(run_id, data)

    async def inject_dispatch_bytes(self, queue: str, data: bytes) -> None:
        self.server.inject_dispatch_bytes(queue, data)

    async def expire_lease(self, bp: Backplane, name: str) -> None:
        self.server.clock.advance(LEASE_TTL)


class NatsHarness(Harness):
    name = "nats"
    ack_wait = 0.3
    quiet = 0.8

    def __init__(self, server: EmbeddedNats) -> None:
        super().__init__()
        self.server = server
        self.max_payload = server.max_payload_mb * 1024 * 1024

    async def _connect(self, name: str) -> Backplane:
        from services.nats import connect

        return await connect(self.server.url, name=name)

    async def _raw_publish(self, subject: str, data: bytes) -> None:
        """Publish what our adapter never would: no message id, any bytes."""
        from services.nats import connect

        raw = await connect(self.server.url, name="contract-raw", provision=False)
        try:
            await raw.connection.js.publish(subject, data)
        finally:
            await raw.close()

    async def inject_event_bytes(self, run_id: str, data: bytes) -> None:
        import msgspec

        from services.nats.names import event_subject

        # The subject names the type the bytes claim, as a writer of them would.
        kind = "Undecodable"
        with contextlib.suppress(msgspec.DecodeError, TypeError, KeyError):
            kind = str(msgspec.json.decode(data)["type"])
        await self._raw_publish(event_subject(run_id, kind), data)

    async def inject_dispatch_bytes(self, queue: str, data: bytes) -> None:
        from services.nats.names import work_subject

        await self._raw_publish(work_subject(queue), data)

    async def expire_lease(self, bp: Backplane, name: str) -> None:
        async def freed() -> bool | None:
            return True if await bp.leases.holder(name) is None else None

        await eventually(freed, timeout=LEASE_TTL + 10, what=f"lease {name!r} to expire")


class OnMemory:
    """Runs a contract against tests.fakes."""

    pytestmark: ClassVar = [pytest.mark.contract]

    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        harness = MemoryHarness()
        try:
            yield harness
        finally:
            await harness.close()


class OnNats:
    """Runs a contract against a real nats-server through services.nats."""

    pytestmark: ClassVar = [pytest.mark.contract, pytest.mark.integration, pytest.mark.timeout(60)]

    @pytest.fixture
    async def harness(self, nats_server: EmbeddedNats) -> AsyncIterator[Harness]:
        harness = NatsHarness(nats_server)
        try:
            yield harness
        finally:
            await harness.close()


class Contract:
    """Base of every port contract: `bp` is a connection to the backend under test."""

    @pytest.fixture
    async def bp(self, harness: Harness) -> Backplane:
        return await harness.connect()


# -- building blocks ----------------------------------------------------------------------------


def scheduled(run_id: str, name: str = "demo") -> RunScheduled:
    return RunScheduled(run_id=run_id, ts=NOW, kind="dag", target=name, name=name, graph=())


def started(run_id: str, task_id: str, attempt: int = 1, agent_id: str = "a1") -> TaskStarted:
    return TaskStarted(run_id=run_id, ts=NOW, task_id=task_id, attempt=attempt, agent_id=agent_id)


def queued(run_id: str, task_id: str, attempt: int = 1, queue: str = "default") -> TaskQueued:
    return TaskQueued(run_id=run_id, ts=NOW, task_id=task_id, attempt=attempt, queue=queue)


def succeeded(run_id: str, task_id: str, attempt: int = 1) -> TaskSucceeded:
    return TaskSucceeded(run_id=run_id, ts=NOW, task_id=task_id, attempt=attempt)


def run_succeeded(run_id: str) -> RunSucceeded:
    return RunSucceeded(run_id=run_id, ts=NOW)


def dispatch(task_id: str, queue: str = "default", attempt: int = 1) -> Dispatch:
    return Dispatch(run_id="r1", task_id=task_id, attempt=attempt, queue=queue, command="true")


async def take(source: AsyncIterator[T], n: int, timeout: float = 10.0) -> list[T]:
    """The first `n` items of `source` (failing after `timeout`); closes the iterator."""

    async def collect() -> list[T]:
        out: list[T] = []
        async for item in source:
            out.append(item)
            if len(out) == n:
                break
        return out

    try:
        return await asyncio.wait_for(collect(), timeout)
    finally:
        await aclose(source)


async def aclose(source: AsyncIterator[Any]) -> None:
    """Close an async generator handed out as an AsyncIterator (ends its subscription)."""
    close: Callable[[], Awaitable[Any]] | None = getattr(source, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


async def fetch_n(consumer: WorkConsumer, n: int, timeout: float = 10.0) -> list[WorkItem]:
    """Exactly `n` items, over as many fetches as it takes (fails after `timeout`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    items: list[WorkItem] = []
    while len(items) < n:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"fetched {len(items)} of {n} items within {timeout}s")
        items += await consumer.fetch(n - len(items), timeout=min(remaining, 2.0))
    assert len(items) == n, f"asked for {n}, got {len(items)}"
    return items
