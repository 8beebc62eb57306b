"""The orchestrator's snapshots of its open runs: taken off the hot path, restored at start.

Without one, a starting orchestrator replays the log from its checkpoint, the first event of the
oldest open run: with many long-lived runs that is most of their history. With one, it restores
every run the snapshot holds and reads the log only from the snapshot's `replay_from`, skipping
each restored run's events up to the position its state covers (core.recovery explains the
format and why that gives the same states as a full replay).

Taking one (every SNAPSHOT_EVERY_S once the log has moved on enough, see `SnapshotKeeper.due`):
- a run is encoded only at a moment it is *clean* — every decision the orchestrator folded into it
  is stored and has come back through the log — so its state is exactly the fold of its events up
  to its last sequence. A run with own appends in flight keeps its previous copy (valid as of
  then), or if it has none is left out and replayed from its first event;
- only runs whose state changed since their last copy are encoded again, a few dozen between two
  yields to the event loop, so deciding never waits for a snapshot;
- the assembled bytes go to the `Snapshots` port in the background (NATS: the object store).

Any problem reading one (none there, NATS away, another version, corruption) is a warning and
the log from the checkpoint is replayed as before: a snapshot only ever saves time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from core.errors import CyclonetixError
from core.recovery import (
    StateSnapshot,
    UnreadableSnapshot,
    decode_snapshot,
    encode_run,
    encode_snapshot,
    restore,
    snapshot_run,
)
from core.run import RunState

if TYPE_CHECKING:
    from services.orchestrator import Orchestrator

__all__ = ["SNAPSHOT", "SnapshotKeeper"]

log = structlog.get_logger("cyclonetix.orchestrator")

SNAPSHOT = "orchestrator"  # the object's name in the Snapshots port
SNAPSHOT_EVERY_S = 5.0  # how often the keeper looks whether one is due
SNAPSHOT_MIN_EVENTS = 2_000  # a snapshot is due once the log moved on by this many events ...
SNAPSHOT_MAX_AGE_S = 60.0  # ... or by any, once the last snapshot is this old
ENCODE_BATCH = 32  # runs encoded between two yields to the event loop
CLEAN_TRIES = 20  # rounds (CLEAN_WAIT_S apart) waiting for busy runs to be clean
CLEAN_WAIT_S = 0.005


@dataclass(slots=True)
class _Copy:
    """One run's encoded snapshot, and where the log must be read from for it to be current."""

    data: bytes
    last_seq: int  # the run's last event folded into it
    replay_from: int  # the orchestrator's seen_seq + 1 when it was taken


class SnapshotKeeper:
    """Takes and restores the snapshots of one orchestrator's leadership (a new leadership
    starts with a new keeper, as it starts with new state)."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator
        self.copies: dict[str, _Copy] = {}
        self.written_seq = 0  # the orchestrator's seen_seq when the last snapshot was taken
        self.written_at = time.monotonic()
        self.taken = 0  # snapshots written (for tests and logs)
        self.behind: list[str] = []  # runs the last snapshot could not take as they were
        self.restored = False  # this leadership started from a snapshot

    # ------------------------------------------------------------------ restoring

    async def restore(self, checkpoint: int) -> int:
        """Restore the runs of the stored snapshot into the orchestrator when that leaves less
        of the log to read than replaying from `checkpoint`; the sequence to read from."""
        orch = self.orch
        try:
            data = await orch.backplane.snapshots.get(SNAPSHOT)
        except CyclonetixError as exc:
            log.warning("orchestrator.snapshot_unavailable", error=str(exc))
            return checkpoint
        if data is None:
            return checkpoint
        try:
            # In a thread: the lease keeper keeps renewing while a large one is decoded.
            snapshot, runs = await asyncio.to_thread(_decode_and_restore, data)
        except UnreadableSnapshot as exc:
            log.warning("orchestrator.snapshot_ignored", reason=str(exc), size=len(data))
            return checkpoint
        end = await orch.events.last_seq()
        if snapshot.replay_from > end + 1 or any(run.last_seq > end for run in snapshot.runs):
            # Not of this log (its stream was deleted and created again, say).
            log.warning(
                "orchestrator.snapshot_ignored",
                reason=f"it covers sequences past the log's end ({end})",
                size=len(data),
            )
            return checkpoint
        if snapshot.replay_from < checkpoint:
            # Every run it holds ended (the checkpoint moved past them): the log is shorter.
            log.info(
                "orchestrator.snapshot_outdated",
                replay_from=snapshot.replay_from,
                checkpoint=checkpoint,
            )
            return checkpoint
        for run in snapshot.runs:
            orch.runs[run.run_id] = runs[run.run_id]
            orch.first_seq[run.run_id] = run.first_seq
            orch.last_seq[run.run_id] = run.last_seq
            orch.covered[run.run_id] = run.last_seq
        self.written_seq = snapshot.replay_from - 1
        self.restored = True
        log.info(
            "orchestrator.snapshot_restored",
            runs=len(runs),
            replay_from=snapshot.replay_from,
            taken_at=snapshot.taken_at.isoformat(),
            size=len(data),
        )
        return snapshot.replay_from

    # ------------------------------------------------------------------ taking

    def clean(self, run_id: str) -> bool:
        """Every decision folded into the run is stored and has been received back."""
        orch = self.orch
        return (
            not orch.inflight.get(run_id)
            and orch.own_seq.get(run_id, 0) <= orch.last_seq.get(run_id, 0)
            and run_id not in orch.racing
        )

    def due(self) -> bool:
        """The log moved on by SNAPSHOT_MIN_EVENTS, or at all and the last snapshot is
        SNAPSHOT_MAX_AGE_S old (or this leadership has none yet: it replayed the log, the next
        one need not), or a run the last one had to take as older (or leave out) can now be
        taken as it is."""
        moved = self.orch.seen_seq - self.written_seq
        if moved >= SNAPSHOT_MIN_EVENTS:
            return True
        if moved > 0 and not self.restored and not self.taken:
            return True
        if moved > 0 and time.monotonic() - self.written_at >= SNAPSHOT_MAX_AGE_S:
            return True
        runs = self.orch.runs
        return any(run_id not in runs or self.clean(run_id) for run_id in self.behind)

    async def loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SNAPSHOT_EVERY_S)
            if self.orch.live and self.orch.deciding() and self.due():
                await self.take()

    async def take(self) -> None:
        """Encode what changed, assemble, store (raises what the port raises)."""
        orch = self.orch
        started = time.perf_counter()
        busy: list[str] = []
        encoded = 0
        for run_id in list(orch.runs):
            fresh = self.refresh(run_id)
            if fresh is None:
                busy.append(run_id)
            elif fresh:
                encoded += 1
                if encoded % ENCODE_BATCH == 0:
                    await asyncio.sleep(0)
        for _ in range(CLEAN_TRIES):
            busy = [run_id for run_id in busy if self.refresh(run_id) is None]
            if not busy:
                break
            await asyncio.sleep(CLEAN_WAIT_S)
        # One synchronous moment: every copy is checked against the state as it is now.
        seen = orch.seen_seq
        replay_from = seen + 1
        runs: list[bytes] = []
        behind: list[str] = []
        for run_id in orch.runs:
            copy = self.copies.get(run_id)
            if copy is None:
                replay_from = min(replay_from, orch.first_seq[run_id])
                behind.append(run_id)
                continue
            runs.append(copy.data)
            if copy.last_seq != orch.last_seq.get(run_id) or not self.clean(run_id):
                replay_from = min(replay_from, copy.replay_from)  # an older copy
                behind.append(run_id)
        prepare_ms = (time.perf_counter() - started) * 1000  # (with waits for busy runs)
        # Assembling and compressing megabytes: in a thread (zlib lets go of the GIL).
        taken_at = dt.datetime.now(dt.UTC)
        data = await asyncio.to_thread(
            encode_snapshot, taken_at=taken_at, replay_from=replay_from, runs=runs
        )
        await orch.backplane.snapshots.put(SNAPSHOT, data)
        self.written_seq, self.written_at = seen, time.monotonic()
        self.behind = behind
        self.taken += 1
        log.info(
            "orchestrator.snapshot_taken",
            runs=len(runs),
            encoded=encoded,
            behind=len(behind),
            replay_from=replay_from,
            seq=seen,
            size=len(data),
            prepare_ms=round(prepare_ms, 1),
            total_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def refresh(self, run_id: str) -> bool | None:
        """Bring a run's copy up to date: True when encoded now, False when it already was (or
        the run is gone), None when the run is busy (not clean) and its copy is behind."""
        orch = self.orch
        state = orch.runs.get(run_id)
        if state is None:
            return False
        last = orch.last_seq[run_id]
        copy = self.copies.get(run_id)
        if copy is not None and copy.last_seq == last and self.clean(run_id):
            return False
        if state.finished or not self.clean(run_id):
            return None
        run = snapshot_run(state, first_seq=orch.first_seq[run_id], last_seq=last)
        self.copies[run_id] = _Copy(encode_run(run), last, orch.seen_seq + 1)
        return True

    def forget(self, run_id: str) -> None:
        self.copies.pop(run_id, None)


def _decode_and_restore(data: bytes) -> tuple[StateSnapshot, dict[str, RunState]]:
    """Decode and restore with the garbage collector paused: restoring creates hundreds of
    thousands of objects and none of them is garbage (a third of the time otherwise)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        snapshot = decode_snapshot(data)
        return snapshot, restore(snapshot)
    finally:
        if paused:
            gc.enable()
