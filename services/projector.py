"""The projector process: turns the event log into a read model (`projections.protocol`).

What it does, in order:
1. opens its read model (memory, Redis or Postgres: `projections.stores.open_read_model`) and
   reads the store's checkpoint, the last stream sequence applied to it (retried while the store
   cannot be reached);
2. tails `CX_EVENTS` through the EventLog port from `checkpoint + 1`: what is stored, then live;
3. applies events in batches: what the log has waiting, up to `batch` events, or what arrives
   within `linger` seconds while more is known to be waiting. A replay moves a batch per store
   write; live, an event that comes alone is applied at once (lag: one store write);
4. a store that cannot be reached (`Unavailable` from `apply_batch`) keeps the batch: logged,
   retried with backoff until it succeeds, and the log waits meanwhile, so nothing is lost. Each
   batch is atomic with the store's checkpoint and an event at or below it is a no-op, so a
   retried write or a restart (even a SIGKILL mid-batch) applies every event exactly once;
5. stops on its stop event: the write under way finishes, what was not yet applied is read
   again from the checkpoint next time.

A message that cannot be read (a newer writer's event type, bytes that are no event) is logged
with its sequence by the EventLog port and given to the store as a skipped entry (`None`): it
changes no row but moves the checkpoint past it, so it is never read again, and a log that ends
in one is caught up with all the same. `lag` tells how far the store is behind the log.

`replay` is the same reading, bounded: the replay tool (`cyclonetix replay`) rebuilds a store
with it, up to a sequence, with progress reports.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import structlog

from core.errors import Unavailable
from projections.bulk import collector_spared
from services.retrying import backoff

if TYPE_CHECKING:
    from core.events import AnyEvent
    from projections.protocol import Entry, ReadModel
    from services.ports import EventLog

__all__ = ["Lag", "Progress", "Projector", "Replayed", "replay"]

log = structlog.get_logger("cyclonetix.projector")

T = TypeVar("T")

BATCH = 500  # events per store write, at most
LINGER_S = 0.005  # how long a batch waits for events the log has but that are still on the way
RETRY_FIRST_S = 0.1  # a store that cannot be reached is tried again after this, doubling ...
RETRY_CAP_S = 5.0  # ... up to this
REPLAY_BATCH = 10_000
PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True, slots=True)
class Lag:
    """How far the store is behind the log: `applied` is the store's checkpoint, `seen` the
    newest sequence the log was known to hold (the last delivery plus what it said was left)."""

    applied: int
    seen: int

    @property
    def events(self) -> int:
        return max(0, self.seen - self.applied)


class Projector:
    """The projector role over one event log and one read-model store (see the module)."""

    def __init__(
        self,
        events: EventLog,
        store: ReadModel,
        *,
        batch: int = BATCH,
        linger: float = LINGER_S,
        retry_first: float = RETRY_FIRST_S,
        retry_cap: float = RETRY_CAP_S,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be positive, not {batch}")
        self.events = events
        self.store = store
        self.batch = batch
        self.linger = linger
        self.retry_first = retry_first
        self.retry_cap = retry_cap
        self.applied = 0  # the store's checkpoint, as last written or read
        self.seen = 0  # the newest sequence known to be in the log
        self.batches = 0  # store writes that succeeded
        self.failures = 0  # store calls that raised Unavailable
        self.live = asyncio.Event()  # set once the store caught up with the log the first time

    @property
    def lag(self) -> Lag:
        return Lag(self.applied, max(self.seen, self.applied))

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` (or until the event log's connection closes)."""
        checkpoint = await self._retrying(self.store.checkpoint, stop, "read the checkpoint")
        if checkpoint is None:
            return
        self.applied = self.seen = checkpoint
        with contextlib.suppress(Unavailable):  # (only for the lag figures: the tail waits)
            self.seen = max(checkpoint, await self.events.last_seq())
        if self.seen == checkpoint:
            self.live.set()  # nothing to catch up with
        log.info("projector.started", from_seq=checkpoint + 1, log_ends_at=self.seen)
        started = time.monotonic()
        tail = self.events.tail(from_seq=checkpoint + 1, stop=stop, skipped=True)
        feed = Feed(tail, self.batch * 4)
        try:
            while not stop.is_set():
                entries = await feed.take(self.batch, linger=self.linger)
                if entries is None:
                    break  # stopped, or the connection closed
                self.seen = max(self.seen, feed.seen)
                write = functools.partial(self.store.apply_batch, entries)
                applied = await self._retrying(write, stop, "apply a batch")
                if applied is None:
                    break  # stopped while the store was away: read again next time
                self.applied = applied
                self.batches += 1
                if not self.live.is_set() and feed.caught_up:
                    self.live.set()
                    log.info(
                        "projector.caught_up",
                        checkpoint=applied,
                        events=applied - checkpoint,
                        seconds=round(time.monotonic() - started, 3),
                    )
        finally:
            await feed.close()
            log.info("projector.stopped", checkpoint=self.applied, lag=self.lag.events)

    async def _retrying(
        self, call: Callable[[], Awaitable[T]], stop: asyncio.Event, what: str
    ) -> T | None:
        """`call()`, retried with backoff while the store is Unavailable; None if `stop` came
        first. Any other error is a bug and ends the projector (a restart resumes it)."""
        delays: Iterator[float] | None = None
        failed = 0
        while True:
            try:
                result = await call()
            except Unavailable as exc:
                failed += 1
                self.failures += 1
                if delays is None:
                    delays = backoff(self.retry_first, self.retry_cap)
                delay = next(delays)
                log.warning(
                    "projector.store_unavailable",
                    action=what,
                    error=str(exc),
                    failures=failed,
                    retry_in=round(delay, 3),
                    checkpoint=self.applied,
                )
                if await _set_within(stop, delay):
                    return None
                continue
            if failed:
                log.info("projector.store_back", action=what, failures=failed)
            return result


# -- replay ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a replay stands: `done` of `total` log positions read, `applied` events applied
    (positions of unreadable messages and events before `from_seq` are not events applied)."""

    done: int
    total: int
    applied: int
    seconds: float

    @property
    def rate(self) -> float:
        """Events applied per second."""
        return self.applied / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace so far (None before there is a pace)."""
        if self.done <= 0 or self.seconds <= 0:
            return None
        return max(0.0, (self.total - self.done) * self.seconds / self.done)


@dataclass(frozen=True, slots=True)
class Replayed:
    applied: int  # events given to the store (those at or below its checkpoint change nothing)
    checkpoint: int  # the store's checkpoint after
    seconds: float
    complete: bool  # False: the log ended before `upto` (its last messages were deleted)

    @property
    def rate(self) -> float:
        return self.applied / self.seconds if self.seconds > 0 else 0.0


async def replay(
    events: EventLog,
    store: ReadModel,
    *,
    from_seq: int = 1,
    upto: int | None = None,
    run_id: str | None = None,
    batch: int = REPLAY_BATCH,
    progress: Callable[[Progress], None] | None = None,
    every: float = PROGRESS_EVERY_S,
) -> Replayed:
    """Apply the log from `from_seq` up to `upto` (default: what it holds now) to `store`, all
    runs or only `run_id`'s; `progress` is called every `every` seconds and once at the end.
    A store that cannot be reached raises Unavailable (run it again: nothing is applied twice)."""
    started = time.monotonic()
    if upto is None:
        upto = await events.last_seq()
    applied = 0
    last_report = started

    def report(done: int, total: int, final: bool = False) -> None:
        nonlocal last_report
        now = time.monotonic()
        if progress is not None and (final or now - last_report >= every):
            last_report = now
            progress(Progress(done, total, applied, now - started))

    if run_id is not None:
        entries: list[Entry] = [
            (seq, event) for seq, event in await events.history(run_id) if from_seq <= seq <= upto
        ]
        with collector_spared() as settle:
            for i in range(0, len(entries), batch):
                chunk = entries[i : i + batch]
                await store.apply_batch(chunk)
                settle()
                applied += len(chunk)
                report(i + len(chunk), len(entries))
        report(len(entries), len(entries), final=True)
        return Replayed(applied, await store.checkpoint(), time.monotonic() - started, True)

    total = max(0, upto - from_seq + 1)
    position = from_seq - 1
    ended = asyncio.Event()
    feed = Feed(events.tail(from_seq=from_seq, stop=ended, skipped=True), batch * 4)
    spared = contextlib.ExitStack()
    settle = spared.enter_context(collector_spared())
    try:
        while position < upto:
            got = await feed.take(batch, linger=LINGER_S)
            if got is None:
                log.warning("replay.log_closed", at=position, upto=upto)
                break
            position = got[-1][0]
            if position > upto:
                got = [e for e in got if e[0] <= upto]
            if got:
                await store.apply_batch(got)
                settle()
                applied += sum(1 for _, event in got if event is not None)
            report(max(0, min(position, upto) - from_seq + 1), total)
            if feed.caught_up and position < upto:
                # Every stored message was read (unreadable ones too), and `upto` was not
                # among them: the messages up to it were deleted since it was chosen.
                log.warning("replay.log_ended", at=position, upto=upto)
                break
    finally:
        spared.close()
        ended.set()
        await feed.close()
    report(max(0, min(position, upto) - from_seq + 1), total, final=True)
    return Replayed(applied, await store.checkpoint(), time.monotonic() - started, position >= upto)


# -- reading ahead --------------------------------------------------------------------------


class Feed:
    """Reads a tail of the log ahead of the store, in a task of its own, up to `limit` events:
    while one batch is written the next one arrives."""

    def __init__(self, tail: AsyncIterator[tuple[int, AnyEvent | None, int]], limit: int) -> None:
        self._items: collections.deque[tuple[int, AnyEvent | None, int]] = collections.deque()
        self._limit = limit
        self._more = asyncio.Event()  # something was added, or the tail ended
        self._room = asyncio.Event()  # below the limit again
        self._room.set()
        self.seen = 0  # the newest sequence the log was known to hold
        self.caught_up = False  # the last event taken was the newest the log held
        self._task = asyncio.ensure_future(self._pump(tail))

    async def _pump(self, tail: AsyncIterator[tuple[int, AnyEvent | None, int]]) -> None:
        try:
            async for seq, event, pending in tail:
                self._items.append((seq, event, pending))
                self.seen = max(self.seen, seq + pending)
                self._more.set()
                if len(self._items) >= self._limit:
                    self._room.clear()
                    await self._room.wait()
        finally:
            self._more.set()

    async def take(self, most: int, *, linger: float) -> list[Entry] | None:
        """Up to `most` entries (at least one), waiting for the first: None when the tail ended
        with nothing left. After the first it takes what is there, and waits up to `linger`
        seconds for more only while the log has more."""
        while not self._items:
            if self._task.done():
                self._task.result()  # the tail's error, if it had one
                return None
            self._more.clear()
            await self._more.wait()
        out: list[Entry] = []
        pending = 0
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        items = self._items
        while len(out) < most:
            if items:
                seq, event, pending = items.popleft()
                out.append((seq, event))
                continue
            if pending == 0 or self._task.done():
                break
            if deadline is None:
                deadline = loop.time() + linger
            left = deadline - loop.time()
            if left <= 0:
                break
            self._more.clear()
            try:
                async with asyncio.timeout(left):
                    await self._more.wait()
            except TimeoutError:
                break
        self.caught_up = pending == 0
        if len(items) < self._limit:
            self._room.set()
        return out

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; whether it is set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()
