"""The orchestrator process: folds the event log into run states and appends what happens next.

What it does, in order (after taking the orchestrator lease: a second orchestrator waits as a
hot standby and takes over when the first one stops renewing it; a leader that cannot renew
steps down before its lease can expire, see `run`):
1. publishes the definitions it was given to the `cx_defs` bucket, so every process sees them;
2. rebuilds the state of every open run: from its latest snapshot plus the log after it
   (services/recovery.py), or if there is none it can use, by replaying the log from its
   checkpoint (the first event of the oldest open run); finished runs leave memory once their
   end is stored;
3. once caught up, re-sends the dispatch of every queued attempt (same message id, so one that
   was already delivered is a no-op) and decides every open run once;
4. then follows the log live: each event is folded into its run, and when no more events are
   waiting the runs that changed are decided. Decisions are folded at once and published
   without waiting for their acknowledgements (they are pipelined), so a task's success turns
   into its dependents' dispatches within a few milliseconds;
5. wakes up by itself for retry backoffs and task deadlines;
6. tells agents to kill the running commands of a run whose cancellation was requested.

Decisions that race with agents (cancelling a queued attempt, failing a silent one) are only
appended once the run's whole log has been seen, with the expected last subject sequence, and
folded only after the append succeeded (see core.run.decide).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from core.errors import Conflict, CyclonetixError, Unavailable
from core.events import (
    TERMINAL,
    AnyEvent,
    EvaluationResult,
    RunCancelRequested,
    RunScheduled,
    TaskLost,
    TaskStarted,
    each_queued,
)
from core.graph import Overrides, TaskNode, extend_graph
from core.run import (
    RunState,
    advance,
    decide,
    dispatch_for,
    fold,
    is_racing,
    next_wakeup,
)
from services.background import alongside
from services.recovery import SnapshotKeeper
from services.retrying import backoff

if TYPE_CHECKING:
    from core.definitions import Definitions
    from services.ports import Backplane

log = structlog.get_logger("cyclonetix.orchestrator")

DEFINITIONS_REFRESH_S = 2.0
LEASE = "orchestrator"  # one lease for all shards until orchestrators split them
LEASE_RETRY_S = 0.25  # a standby asks this often: takes over within 0.25 s of the expiry
RACING_RETRY_S = 0.25  # a racing append that failed (not a conflict) is decided again after this
LEASE_RENEW_S = 2.0  # well inside LEASE_TTL_S
LEASE_TTL_S = 6.0  # a lease not renewed is free this long after its last renewal (services/nats)
# A leader whose last successful renewal is LEASE_TTL_S - LEASE_MARGIN_S old stops deciding:
# before its lease can expire and a standby can take it, whatever the renewals' errors.
LEASE_MARGIN_S = 1.5
CHECKPOINT = "orchestrator.resume_from"
CHECKPOINT_EVERY_S = 2.0
DECIDE_AFTER_EVENTS = 256
RETRY_FIRST_S = 0.1  # a write the run needs is retried after this, doubling up to RETRY_CAP_S
RETRY_CAP_S = 5.0


class SteppedDown(Exception):
    """This orchestrator stopped leading: its lease could not be renewed in time, or was lost."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Orchestrator:
    def __init__(
        self,
        backplane: Backplane,
        *,
        clock: Callable[[], float] = time.monotonic,
        shutdown_grace: float = 5.0,
    ) -> None:
        self.backplane = backplane
        self.events = backplane.events
        self.clock = clock  # what the lease's age is measured with (tests: the fake's clock)
        self.shutdown_grace = shutdown_grace  # a graceful stop's bound (see `run`)
        self.kill = asyncio.Event()  # cuts a graceful stop short
        self.stopped_at: float | None = None  # (clock) when `stop` was seen
        self.holder = f"{socket.gethostname()}-{os.getpid()}"
        self.lease_revision = 0
        self.leading = False
        self.renewed_at = -math.inf  # (clock) when the last successful renewal was sent
        self.reset()

    def reset(self) -> None:
        """Forget everything derived from the log: a new leadership rebuilds it by replaying
        (what was folded but never stored is decided again)."""
        self.runs: dict[str, RunState] = {}
        self.last_seq: dict[str, int] = {}  # per open run: last stream sequence received
        self.inflight: dict[str, int] = {}  # per open run: own appends not yet acknowledged
        self.own_seq: dict[str, int] = {}  # per open run: highest sequence of an own append
        self.dirty: dict[str, None] = {}
        self.racing: set[str] = set()  # runs with a racing decision being appended
        self.wakeups: list[tuple[dt.datetime, str]] = []
        self.wake = asyncio.Event()
        self.live = False
        self.definitions: Definitions | None = None
        self.definitions_at = 0.0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.first_seq: dict[str, int] = {}  # per open run: sequence of its RunScheduled
        self.seen_seq = 0  # highest sequence received
        self.writes: set[asyncio.Future[int]] = set()  # pipelined appends and dispatches
        # Restored from a snapshot: per run, the last sequence its state already covers.
        self.covered: dict[str, int] = {}
        self.snapshot_keeper = SnapshotKeeper(self)
        self.replay_from = 0  # where this leadership started reading the log
        self.replayed = 0  # events read before going live
        self.skipped = 0  # of those, already covered by the snapshot

    # ------------------------------------------------------------------ main loop

    async def run(self, stop: asyncio.Event, kill: asyncio.Event | None = None) -> None:
        """Lead while holding the orchestrator lease, until `stop`.

        A graceful stop, within `shutdown_grace` (`kill` cuts it short): the leader first folds
        and decides what the log held when `stop` came (`drain`: a run whose last task an agent
        finished just before is ended, not left to the next leader), then waits for its writes
        to be stored, then releases the lease so a standby takes over at once. Its deciding
        still ends with the lease's validity (the lease is not renewed after `stop`).

        One leader at a time: a leader whose lease cannot be renewed (NATS away, any error of
        the Leases port) keeps deciding only until its last successful renewal is
        LEASE_TTL_S - LEASE_MARGIN_S old, then steps down before the lease can expire: it
        writes nothing more (no decision, dispatch, retry of either, checkpoint or TaskLost),
        cancels its pipelined writes still waiting, forgets its state and waits as a standby.
        When it takes the lease again it replays the log like any new leader, so decisions it
        had folded but not stored are decided again (deterministic message ids: those that
        were stored are not duplicated). Writes already handed to the connection before it
        stepped down may still land; they are the same facts a new leader decides (same ids),
        and fold fences whatever no longer fits.
        """
        if kill is not None:
            self.kill = kill
        while not stop.is_set() and not self.backplane.closed:
            revision = await self.acquire_lease(stop)
            if revision is None:
                return
            stepped_down = False
            try:
                await self.lead(revision, stop)
            except* (SteppedDown, Unavailable) as stepped:
                # (Unavailable: NATS went away while it was reading what it needs to lead.)
                log.warning("orchestrator.stepped_down", reason=str(stepped.exceptions[0]))
                stepped_down = True
            if not stepped_down:  # stopped (or the connection closed)
                await self.settle_writes()
                with contextlib.suppress(Exception):  # best effort: it expires anyway
                    await asyncio.wait_for(
                        self.backplane.leases.release(LEASE, self.lease_revision),
                        max(0.5, self.stop_left()),
                    )
                return

    def stop_left(self) -> float:
        """Seconds left of a graceful stop (its clock starts when first asked)."""
        if self.stopped_at is None:
            self.stopped_at = self.clock()
        if self.kill.is_set():
            return 0.0
        return self.stopped_at + self.shutdown_grace - self.clock()

    async def settle_writes(self) -> None:
        """Stopping: wait for the pipelined writes to be stored (within the grace, or `kill`)."""
        waiting: set[asyncio.Future[Any]] = set(self.writes)
        killed = asyncio.ensure_future(self.kill.wait())
        try:
            while waiting and not killed.done() and (left := self.stop_left()) > 0:
                _, waiting = await asyncio.wait(
                    {*waiting, killed}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                waiting.discard(killed)
        finally:
            killed.cancel()

    async def drain(self, stop: asyncio.Event, reading: asyncio.Event) -> None:
        """Once `stop` is set: let the tail fold everything the log held at that moment and
        decide it (within the grace, `kill` and the lease's validity), then end the tail."""
        try:
            await stop.wait()
            if self.live and self.deciding():
                end = await asyncio.wait_for(self.events.last_seq(), max(0.1, self.stop_left()))
                # Polled: the tail (the main loop) folds meanwhile.
                while self.seen_seq < end and self.deciding() and self.stop_left() > 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
                await self.decide_dirty()
        except (TimeoutError, CyclonetixError) as exc:
            log.warning("orchestrator.drain_failed", error=repr(exc))
        finally:
            reading.set()

    async def lead(self, revision: int, stop: asyncio.Event) -> None:
        """Follow the log and decide, renewing the lease alongside; SteppedDown when the lease
        cannot be kept."""
        self.reset()
        self.leading = True
        try:
            async with alongside(self.keep_lease(revision, stop)):
                await self.follow_log(stop)
        except BaseException:
            # Stepping down (or failing): what is still waiting to be written is dropped.
            for write in list(self.writes):
                write.cancel()
            raise
        finally:
            self.leading = False
            self.live = False

    @property
    def lease_valid_until(self) -> float:
        """(clock) when this leader stops deciding unless it renews its lease before."""
        return self.renewed_at + LEASE_TTL_S - LEASE_MARGIN_S

    def deciding(self) -> bool:
        """Whether this orchestrator may write decisions now: it leads, and its lease cannot
        have expired yet (checked again before every batch of writes, so a keeper that is
        slow to notice never lets a write through)."""
        return self.leading and self.clock() < self.lease_valid_until

    async def follow_log(self, stop: asyncio.Event) -> None:
        await self.refresh_definitions(force=True)
        # Everything before the checkpoint belongs to runs that ended: start after it, or
        # later still from a snapshot of the open runs.
        checkpoint = await self.backplane.checkpoints.get(CHECKPOINT) or 1
        from_seq = self.replay_from = await self.snapshot_keeper.restore(checkpoint)
        caught_up_at = await self.events.last_seq()
        self.seen_seq = from_seq - 1
        log.info("orchestrator.replaying", from_seq=from_seq, to_seq=caught_up_at)
        started = time.perf_counter()
        if caught_up_at < from_seq:
            await self.go_live(started)
        try:
            async with alongside(
                self.supervised("timers", lambda: self.timer_loop(stop), stop),
                self.supervised("lost work", self.watch_lost, stop),
                self.supervised("checkpoints", lambda: self.checkpoint_loop(stop), stop),
                self.supervised("snapshots", lambda: self.snapshot_keeper.loop(stop), stop),
            ):
                await self.apply_log(from_seq, caught_up_at, started, stop)
        finally:
            for task in list(self.tasks):
                task.cancel()

    async def apply_log(
        self, from_seq: int, caught_up_at: int, started: float, stop: asyncio.Event
    ) -> None:
        """Fold every event from `from_seq` on; live (from `caught_up_at`), decide as they come;
        after `stop`, until what the log held then is decided (`drain`)."""
        undecided = 0
        reading = asyncio.Event()  # the tail's own stop
        self.spawn(self.drain(stop, reading))
        async for seq, event, pending in self.events.tail(from_seq=from_seq, stop=reading):
            if await self.reopens_a_run(seq, event):
                self.seen_seq = max(self.seen_seq, seq)
            else:
                self.apply(seq, event)
            undecided += 1
            if not self.live:
                self.replayed += 1
                if seq >= caught_up_at:
                    await self.go_live(started)
            elif pending == 0 or undecided >= DECIDE_AFTER_EVENTS:
                # Deciding once the backlog is read batches work under load; the bound
                # keeps a backlog that never empties from holding decisions back.
                await self.decide_dirty()
                undecided = 0

    async def reopens_a_run(self, seq: int, event: AnyEvent) -> bool:
        """Whether `event` is a RunScheduled that is not its run's first event: a stored one
        published again (without the expected-sequence check), maybe long after the run ended,
        maybe met in the middle of history by a replay from the checkpoint. A run id is used
        once, whoever writes: it is ignored. The log is asked (one direct read) only for runs
        not in memory; an open run's fold ignores a second RunScheduled by itself."""
        if not isinstance(event, RunScheduled) or event.run_id in self.runs:
            return False
        first: int | None = None
        delays = backoff(RETRY_FIRST_S, cap=RETRY_CAP_S)
        while True:
            try:
                first = await self.events.first_seq(event.run_id)
                break
            except Unavailable as exc:  # (the tail is stalled too: nothing is held up)
                log.warning("orchestrator.retrying", what="first_seq", error=str(exc))
                await asyncio.sleep(next(delays))
        if first is None or first >= seq:
            return False
        log.warning(
            "orchestrator.run_scheduled_again_ignored",
            run_id=event.run_id,
            seq=seq,
            first_seq=first,
        )
        return True

    def apply(self, seq: int, event: AnyEvent) -> None:
        self.seen_seq = max(self.seen_seq, seq)
        run_id = event.run_id
        if self.covered and seq <= self.covered.get(run_id, 0):
            self.skipped += 1
            return  # already in the state restored from a snapshot
        state = self.runs.get(run_id)
        if state is None:
            if not isinstance(event, RunScheduled):
                return  # a late event of a run that has already ended (and left memory)
            self.first_seq[run_id] = seq
        self.last_seq[run_id] = seq
        state = fold(state, event)
        if state is None:
            return
        self.runs[run_id] = state
        if isinstance(event, TERMINAL):
            # Forgotten only once its end is stored: the checkpoint may then move past it.
            self.forget(run_id)
            return
        self.dirty[run_id] = None
        if (
            state.cancel_requested
            and self.live
            and isinstance(event, RunCancelRequested | TaskStarted)
        ):
            # (again for a start that landed after the cancellation: its agent kills it)
            self.spawn(self.backplane.cancels.announce(run_id))

    # ------------------------------------------------------------------ lease and checkpoint

    async def acquire_lease(self, stop: asyncio.Event) -> int | None:
        """One orchestrator decides at a time; others wait here as hot standbys. A failing
        lease call (NATS away, or any error an adapter lets through) is logged and tried
        again: a standby never dies of it."""
        waiting = failing = False
        while not stop.is_set() and not self.backplane.closed:
            sent = self.clock()
            try:
                revision = await self.backplane.leases.acquire(LEASE, self.holder)
                if revision is None and not waiting:
                    holder = await self.backplane.leases.holder(LEASE)
                    log.info("orchestrator.standby", holder=holder)
                    waiting = True
            except Exception as exc:  # noqa: BLE001 - whatever it is, try again
                if not failing:
                    log.warning("orchestrator.lease_acquire_failed", error=repr(exc))
                failing = True
                revision = None
            else:
                failing = False
            if revision is not None:
                log.info("orchestrator.lease_acquired", holder=self.holder)
                self.lease_revision = revision
                self.renewed_at = sent  # (the server wrote it after this)
                return revision
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LEASE_RETRY_S)
        return None

    async def keep_lease(self, revision: int, stop: asyncio.Event) -> None:
        """Renew every LEASE_RENEW_S (after a failure, every LEASE_RETRY_S); any failure of a
        renewal is logged and tried again. Raises SteppedDown once the last successful renewal
        is LEASE_TTL_S - LEASE_MARGIN_S old (each renewal is bounded by that moment), or when
        the lease turns out to be lost."""
        delay = LEASE_RENEW_S
        while True:
            left = self.lease_valid_until - self.clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, min(delay, left)))
            if stop.is_set():
                return
            sent = self.clock()
            if sent >= self.lease_valid_until:
                raise SteppedDown(
                    f"the lease could not be renewed for {sent - self.renewed_at:.1f} s"
                )
            try:
                renewed = await asyncio.wait_for(
                    self.backplane.leases.renew(LEASE, self.holder, revision),
                    self.lease_valid_until - sent,
                )
            except Exception as exc:  # noqa: BLE001 - whatever it is, try again until the margin
                log.warning("orchestrator.lease_renew_failed", error=repr(exc))
                delay = min(LEASE_RETRY_S, LEASE_RENEW_S)
                continue
            if renewed is None:
                raise SteppedDown("the lease was lost: another orchestrator may hold it")
            revision = self.lease_revision = renewed
            self.renewed_at = sent
            delay = LEASE_RENEW_S

    async def checkpoint_loop(self, stop: asyncio.Event) -> None:
        written = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECKPOINT_EVERY_S)
            if not self.live or not self.deciding():
                continue
            resume = min(self.first_seq.values(), default=self.seen_seq + 1)
            if resume != written:
                with contextlib.suppress(CyclonetixError):
                    await self.backplane.checkpoints.put(CHECKPOINT, resume)
                    written = resume

    async def go_live(self, started: float) -> None:
        self.live = True
        self.covered.clear()  # (every covered sequence is behind the caught-up point)
        log.info(
            "orchestrator.live",
            open_runs=len(self.runs),
            replay_from=self.replay_from,
            replayed=self.replayed,
            skipped=self.skipped,
            replay_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        # A crash between appending TasksQueued and publishing its dispatches must not strand the
        # attempt: re-send every queued one (the work stream drops duplicates by message id).
        for state in self.runs.values():
            for task_id in state.queued:
                self.publish_dispatch(state, task_id)
        self.dirty.update(dict.fromkeys(self.runs))
        for state in self.runs.values():
            if state.cancel_requested:  # announced before a crash, maybe not: again
                self.spawn(self.backplane.cancels.announce(state.run_id))
        await self.decide_dirty()

    # ------------------------------------------------------------------ deciding

    async def decide_dirty(self) -> None:
        if not self.deciding():
            return  # (kept dirty: stepping down, or deciding again once renewed)
        now = utcnow()
        if any(self.runs[r].evaluating for r in self.dirty if r in self.runs):
            await self.refresh_definitions()
        dirty, self.dirty = self.dirty, {}
        for run_id in dirty:
            state = self.runs.get(run_id)
            if state is not None:
                self.decide(state, now)

    def decide(self, state: RunState, now: dt.datetime) -> None:
        for event in advance(state, now, self.extend, racing=False):
            self.publish(state, event)
        if state.finished:
            return  # forgotten when its terminal event comes back from the log
        if self.may_race(state, now) and state.run_id not in self.racing:
            self.racing.add(state.run_id)
            self.spawn(self.append_racing(state))
        wakeup = next_wakeup(state)
        if wakeup is not None:
            heapq.heappush(self.wakeups, (wakeup, state.run_id))
            self.wake.set()

    def may_race(self, state: RunState, now: dt.datetime) -> bool:
        if state.open_tasks == 0 or (state.cancel_requested and state.queued):
            return True  # end the run, or cancel queued attempts (both race with agents)
        return any(deadline <= now for deadline in state.deadlines.values())

    async def append_racing(self, state: RunState) -> None:
        """Append decisions that race with agents, only if nobody appended to the run since."""
        run_id = state.run_id
        try:
            deadline = time.monotonic() + 30
            # Wait until our own appends are acknowledged and have come back through the log,
            # so the run's last sequence is one we have folded.
            while self.inflight.get(run_id) or self.own_seq.get(run_id, 0) > self.last_seq.get(
                run_id, 0
            ):
                if time.monotonic() > deadline or run_id not in self.runs:
                    return
                await asyncio.sleep(0.005)
            if run_id not in self.runs:
                return  # it ended meanwhile
            now = utcnow()
            expected = self.last_seq[run_id]
            for event in decide(state, now, self.extend, racing=True):
                if not is_racing(event):
                    continue
                if not self.deciding():
                    return
                try:
                    expected = await self.events.append_expected(event, expected)
                except Conflict:
                    # Decided again below: the newer events may have been folded already
                    # (our own, say), and then nothing else would wake this run up.
                    log.info("orchestrator.racing_conflict", run_id=run_id)
                    break
                except Exception as exc:  # noqa: BLE001 - NATS away, or a rejection we do not know
                    # Not stored, or stored with its ack lost: either way decided again, after
                    # a pause (a run left undecided here would never end).
                    log.warning("orchestrator.racing_retry", run_id=run_id, error=repr(exc))
                    await asyncio.sleep(RACING_RETRY_S)
                    break
                self.own_seq[run_id] = max(self.own_seq.get(run_id, 0), expected)
                fold(state, event)
            self.dirty[run_id] = None
        finally:
            self.racing.discard(run_id)
        await self.decide_dirty()

    def extend(
        self,
        existing: dict[str, TaskNode],
        after: str,
        result: EvaluationResult,
        overrides: Overrides,
    ) -> tuple[TaskNode, ...]:
        """New tasks come from the current definitions (core.graph.extend_graph), with the
        run's schedule-time overrides on top, as for the tasks it started with."""
        if self.definitions is None:
            raise ValueError("no definitions published (start the orchestrator with --definitions)")
        return extend_graph(
            existing,
            self.definitions,
            after=after,
            next_tasks=result.next_tasks,
            parameters=result.parameters,
            overrides=overrides,
        )

    # ------------------------------------------------------------------ publishing

    def publish(self, state: RunState, event: AnyEvent) -> None:
        run_id = event.run_id
        self.inflight[run_id] = self.inflight.get(run_id, 0) + 1
        future = self.events.append_nowait(event)
        self.writes.add(future)
        future.add_done_callback(self.writes.discard)
        future.add_done_callback(lambda f: self.appended(event, f))
        for queued in each_queued(event):
            self.publish_dispatch(state, queued.task_id)  # (already folded)

    def appended(self, event: AnyEvent, future: asyncio.Future[int]) -> None:
        run_id = event.run_id
        if run_id in self.inflight:
            self.inflight[run_id] -= 1
        error = "cancelled" if future.cancelled() else future.exception()
        if error is not None:
            if not self.leading:
                return  # stepped down: whoever leads next decides it again
            # The decision is folded but not stored: store it with retries (same message id).
            # In flight until stored (a snapshot must not take the run as clean meanwhile).
            log.warning("orchestrator.append_retry", run_id=run_id, error=repr(error))
            self.inflight[run_id] = self.inflight.get(run_id, 0) + 1
            self.spawn(self.append_reliably(event))
            return
        seq = future.result()
        if run_id in self.own_seq or run_id in self.runs:
            self.own_seq[run_id] = max(self.own_seq.get(run_id, 0), seq)

    async def append_reliably(self, event: AnyEvent) -> None:
        """Store a folded decision whose pipelined append failed (counted in flight by the
        caller until this ends)."""
        try:
            seq = await self.until_done(event.run_id, "append", lambda: self.events.append(event))
            if seq is not None:
                self.own_seq[event.run_id] = max(self.own_seq.get(event.run_id, 0), seq)
        finally:
            if event.run_id in self.inflight:  # (not when the run ended meanwhile)
                self.inflight[event.run_id] -= 1

    def publish_dispatch(self, state: RunState, task_id: str) -> None:
        dispatch = dispatch_for(state, task_id)
        future = self.backplane.work.dispatch_nowait(dispatch)
        self.writes.add(future)
        future.add_done_callback(self.writes.discard)

        def sent(f: asyncio.Future[Any]) -> None:
            if not self.leading:
                return  # stepped down: the next leader sends it again when it goes live
            if f.cancelled() or f.exception() is not None:
                log.warning("orchestrator.dispatch_retry", run_id=dispatch.run_id)
                self.spawn(
                    self.until_done(
                        dispatch.run_id, "dispatch", lambda: self.backplane.work.dispatch(dispatch)
                    )
                )

        future.add_done_callback(sent)

    async def until_done(
        self, run_id: str, what: str, attempt: Callable[[], Awaitable[int]]
    ) -> int | None:
        """Retry a write the run cannot do without (a folded decision, a dispatch) for as long
        as the run is open: giving up would strand it. Same message id every time, so a write
        that did land is not duplicated. None once the run has left memory, or once this
        orchestrator may not decide any more (the next leader decides it again)."""
        delays = backoff(RETRY_FIRST_S, cap=RETRY_CAP_S)
        while True:
            if not self.deciding():
                return None
            try:
                return await attempt()
            except Unavailable as exc:
                if run_id not in self.runs:
                    return None
                log.warning("orchestrator.retrying", what=what, run_id=run_id, error=str(exc))
                await asyncio.sleep(next(delays))

    def forget(self, run_id: str) -> None:
        """A finished run leaves memory: only open runs cost the orchestrator anything."""
        self.runs.pop(run_id, None)
        self.last_seq.pop(run_id, None)
        self.first_seq.pop(run_id, None)
        self.inflight.pop(run_id, None)
        self.own_seq.pop(run_id, None)
        self.dirty.pop(run_id, None)
        self.snapshot_keeper.forget(run_id)

    # ------------------------------------------------------------------ timers and lost work

    async def timer_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            timeout = None
            if self.wakeups:
                timeout = max(0.0, (self.wakeups[0][0] - utcnow()).total_seconds())
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
            now = utcnow()
            while self.wakeups and self.wakeups[0][0] <= now:
                _, run_id = heapq.heappop(self.wakeups)
                if run_id in self.runs:
                    self.dirty[run_id] = None
            if self.live and self.dirty:
                await self.decide_dirty()

    async def watch_lost(self) -> None:
        """An attempt whose deliveries ran out (its agents kept dying) is lost, not stranded."""
        async for lost in self.backplane.work.lost():
            if not self.deciding():
                return  # not settled: delivered again to whoever leads
            dispatch, deliveries = lost.dispatch, lost.deliveries
            log.warning(
                "orchestrator.task_lost",
                run_id=dispatch.run_id,
                task_id=dispatch.task_id,
                attempt=dispatch.attempt,
                deliveries=deliveries,
            )
            lost_event = TaskLost(
                run_id=dispatch.run_id,
                ts=utcnow(),
                task_id=dispatch.task_id,
                attempt=dispatch.attempt,
                message=f"no agent finished it after {deliveries} deliveries",
            )
            await self.events.append(lost_event)

    async def refresh_definitions(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self.definitions_at < DEFINITIONS_REFRESH_S:
            return
        self.definitions = await self.backplane.definitions.load()
        self.definitions_at = time.monotonic()

    async def supervised(
        self, name: str, loop: Callable[[], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        """A background loop that fails (NATS away, a bug) is logged and started again."""
        while not stop.is_set():
            try:
                await loop()
            except Exception as exc:  # noqa: BLE001 - a helper loop must not die silently
                log.error("orchestrator.loop_failed", loop=name, error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """One-off work beside the main loop (an announcement, a retried append), cancelled
        when the log stops being followed; a failure is logged, never fatal (not a TaskGroup:
        a cancel announcement that fails while NATS is away must not stop the orchestrator)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._spawned_done)
        return task

    def _spawned_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("orchestrator.background_failed", error=repr(exc))
