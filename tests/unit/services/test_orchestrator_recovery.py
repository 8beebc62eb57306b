"""Bounded recovery on the in-memory fake: the orchestrator snapshots its open runs and a new one
resumes from the snapshot plus the tail of the log; a snapshot it cannot use (corrupt, another
version, unreadable) is ignored with a warning and the log is replayed from the checkpoint.

The snapshot loop runs every 20 ms here, and a snapshot is due after any new event.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import zlib
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
import structlog

from core.definitions import TaskDef
from core.events import (
    TERMINAL,
    AnyEvent,
    Dispatch,
    RunSucceeded,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
)
from core.recovery import (
    StateSnapshot,
    decode_snapshot,
    encode_run,
    encode_snapshot,
    snapshot_run,
)
from core.run import QUEUED, replay
from services import orchestrator as orchestrator_module
from services import recovery as recovery_module
from services.orchestrator import CHECKPOINT
from services.ports import Backplane
from services.recovery import SNAPSHOT
from tests.fakes import MemoryBackplane, MemoryServer
from tests.fakes.faults import EVERY_CALL
from tests.rolekit import (
    Connect,
    defs,
    queued_attempts,
    running_orchestrator,
    schedule,
    stand_in_agent,
    until_end,
    wait_for_event,
)
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

# Five steps of history, then a task the stand-in agent holds until the test lets it go.
LONG = defs(
    TaskDef(id="s1", command="true"),
    *(TaskDef(id=f"s{i}", command="true", dependencies=(f"s{i - 1}",)) for i in range(2, 6)),
    TaskDef(id="held", command="true", dependencies=("s5",)),
    TaskDef(id="after", command="true", dependencies=("held",)),
)
RUNS = 6


@pytest.fixture(autouse=True)
def fast_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(orchestrator_module, "LEASE_RETRY_S", 0.05)
    monkeypatch.setattr(orchestrator_module, "CHECKPOINT_EVERY_S", 0.02)
    monkeypatch.setattr(recovery_module, "SNAPSHOT_EVERY_S", 0.02)
    monkeypatch.setattr(recovery_module, "SNAPSHOT_MIN_EVENTS", 1)


def stored_snapshot(server: MemoryServer) -> StateSnapshot | None:
    data = server.snapshots.objects.get(SNAPSHOT)
    return decode_snapshot(data) if data is not None else None


async def snapshot_current(server: MemoryServer, bp: Backplane) -> StateSnapshot:
    """Wait for a snapshot that covers the whole log as it is now (nothing left to replay)."""
    end = await bp.events.last_seq()

    async def current() -> StateSnapshot | None:
        snapshot = stored_snapshot(server)
        return snapshot if snapshot is not None and snapshot.replay_from == end + 1 else None

    return await eventually(current, what=f"a snapshot covering sequence {end}")


@contextlib.asynccontextmanager
async def held_agent(bp: Backplane) -> AsyncIterator[asyncio.Event]:
    """A stand-in agent that succeeds at everything, `held` only once the event is set."""
    release = asyncio.Event()

    async def answer(d: Dispatch) -> bool:
        if d.task_id == "held":
            await release.wait()
        return True

    async with stand_in_agent(bp, answer):
        yield release


async def open_long_runs(bp: Backplane, n: int = RUNS) -> list[str]:
    """`n` runs with history, each now running its held task; and two finished runs."""
    for _ in range(2):
        await until_end(bp, await schedule(bp, defs(TaskDef(id="x", command="true")), "x"))
    run_ids = [await schedule(bp, LONG, "after") for _ in range(n)]
    for run_id in run_ids:
        await wait_for_event(bp, run_id, is_started("held"))
    return run_ids


async def checkpoint_at_oldest(bp: Backplane, run_ids: list[str]) -> int:
    """Wait for the checkpoint to be the first event of the oldest of `run_ids`; that."""
    oldest = min([(await bp.events.history(r))[0][0] for r in run_ids])

    async def written() -> int | None:
        return oldest if await bp.checkpoints.get(CHECKPOINT) == oldest else None

    return await eventually(written, what=f"the checkpoint at {oldest}")


def is_started(task_id: str) -> Callable[[AnyEvent], bool]:
    return lambda e: isinstance(e, TaskStarted) and e.task_id == task_id


async def release_held(bp: Backplane, release: asyncio.Event, run_ids: list[str]) -> int:
    """Let the held tasks finish (no orchestrator is running): the tail; the log's end after."""
    release.set()
    for run_id in run_ids:
        await wait_for_event(
            bp, run_id, lambda e: isinstance(e, TaskSucceeded) and e.task_id == "held"
        )
    return await bp.events.last_seq()


def assert_ran_once_each(events: list[AnyEvent]) -> None:
    assert isinstance(events[-1], RunSucceeded)
    assert sum(isinstance(e, TERMINAL) for e in events) == 1
    assert sorted(queued_attempts(events)) == sorted((t, 1) for t in LONG.tasks)


# -- resuming from a snapshot -----------------------------------------------------------------


async def test_a_restart_resumes_from_the_snapshot_and_reads_only_the_tail(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    async with held_agent(bp) as release:
        async with running_orchestrator(connect) as first:
            run_ids = await open_long_runs(bp)
            snapshot = await snapshot_current(server, bp)
            assert {run.run_id for run in snapshot.runs} == set(run_ids)
            assert first.snapshot_keeper.taken >= 1
            oldest_open = await checkpoint_at_oldest(bp, run_ids)
        end = await release_held(bp, release, run_ids)
        async with running_orchestrator(connect) as restarted:
            for run_id in run_ids:
                assert_ran_once_each(await until_end(bp, run_id))
    # It read the log from the snapshot on: the held tasks' successes only, not the runs'
    # history since the oldest one began (which the checkpoint alone would have replayed).
    assert restarted.replay_from == snapshot.replay_from > oldest_open
    tail = end - snapshot.replay_from + 1
    assert tail == len(run_ids)
    assert restarted.replayed == tail
    assert end - oldest_open + 1 > 10 * tail


async def test_runs_begun_after_the_snapshot_are_replayed_from_their_first_event(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    async with held_agent(bp) as release:
        async with running_orchestrator(connect):
            run_ids = await open_long_runs(bp, 2)
            snapshot = await snapshot_current(server, bp)
        # While no orchestrator runs: a new run is scheduled, the held tasks finish.
        late = await schedule(bp, LONG, "after")
        end = await release_held(bp, release, run_ids)
        async with running_orchestrator(connect) as restarted:
            for run_id in [*run_ids, late]:
                assert_ran_once_each(await until_end(bp, run_id))
    assert restarted.replay_from == snapshot.replay_from
    assert restarted.replayed == end - snapshot.replay_from + 1


async def test_a_run_snapshotted_behind_the_others_is_caught_up_from_the_log(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    """A snapshot as an orchestrator writes one when a run was busy: that run as of an earlier
    position, so the log is read from there; the other runs' events up to their own positions
    are skipped, not folded again."""
    async with held_agent(bp) as release:
        async with running_orchestrator(connect):
            current, behind = await open_long_runs(bp, 2)
        histories = {r: await bp.events.history(r) for r in (current, behind)}
        # `behind` as of its third task's success; `current` as it is.
        cut = next(
            seq
            for seq, e in histories[behind]
            if isinstance(e, TaskSucceeded) and e.task_id == "s3"
        )
        runs = []
        for run_id, upto in ((current, None), (behind, cut)):
            kept = [(seq, e) for seq, e in histories[run_id] if upto is None or seq <= upto]
            state = replay([e for _, e in kept])[run_id]
            run = snapshot_run(state, first_seq=kept[0][0], last_seq=kept[-1][0])
            runs.append(encode_run(run))
        taken = dt.datetime.now(dt.UTC)
        server.snapshots.objects[SNAPSHOT] = encode_snapshot(
            taken_at=taken, replay_from=cut + 1, runs=runs
        )
        end = await release_held(bp, release, [current, behind])
        async with running_orchestrator(connect) as restarted:
            for run_id in (current, behind):
                assert_ran_once_each(await until_end(bp, run_id))
    assert restarted.replay_from == cut + 1
    assert restarted.replayed == end - cut
    covered_of_current = [seq for seq, _ in histories[current] if seq > cut]
    assert covered_of_current and restarted.skipped == len(covered_of_current)


async def test_a_decision_not_yet_stored_is_not_in_the_snapshot(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    """The orchestrator folds its decisions before they are stored. A snapshot taken while one
    cannot be stored holds the run as it was before it, so a restart after losing it decides it
    again (and the log has it), instead of believing it was made."""
    two = defs(
        TaskDef(id="a", command="true"), TaskDef(id="b", command="true", dependencies=("a",))
    )
    async with running_orchestrator(connect) as first:
        run_id = await schedule(bp, two, "b")
        await wait_for_event(bp, run_id, lambda e: isinstance(e, TasksQueued))
        now = dt.datetime.now(dt.UTC)
        await bp.events.append(
            TaskStarted(run_id=run_id, ts=now, task_id="a", attempt=1, agent_id="t")
        )
        await snapshot_current(server, bp)
        taken = first.snapshot_keeper.taken
        await bp.events.append(TaskSucceeded(run_id=run_id, ts=now, task_id="a", attempt=1))
        # Neither the orchestrator's TasksQueued(b) nor its dispatch is stored (a dispatch that
        # reached an agent while its TasksQueued was lost is another story: not this test's).
        server.faults.fail_appends(EVERY_CALL)
        server.faults.fail_dispatches(EVERY_CALL)

        async def b_folded_and_snapshot_taken() -> bool | None:
            state = first.runs[run_id]
            queued = state.tasks["b"].status == QUEUED
            return True if queued and first.snapshot_keeper.taken > taken else None

        await eventually(b_folded_and_snapshot_taken, what="b queued in memory, a snapshot")
        snapshot = stored_snapshot(server)
        assert snapshot is not None
        (run,) = snapshot.runs
        assert {t.node.id: t.status for t in run.tasks}["b"] == "pending"
    server.faults.failing_appends = server.faults.failing_dispatches = 0
    async with stand_in_agent(bp), running_orchestrator(connect):
        events = await until_end(bp, run_id)
    assert queued_attempts(events) == [("a", 1), ("b", 1)]
    assert isinstance(events[-1], RunSucceeded)


async def test_a_run_never_snapshotted_is_replayed_from_its_first_event(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    """A run whose first decision could not be stored is in no snapshot: the snapshot says to
    read the log from its first event."""
    x = defs(TaskDef(id="x", command="true", queue="later"))  # (no agent until the restart)
    async with held_agent(bp) as release:
        async with running_orchestrator(connect) as first:
            others = await open_long_runs(bp, 2)
            await snapshot_current(server, bp)
            taken = first.snapshot_keeper.taken
            run_id = await schedule(bp, x, "x")
            first_seq = await bp.events.last_seq()
            server.faults.fail_appends(EVERY_CALL)  # (and its dispatch: see the test above)
            server.faults.fail_dispatches(EVERY_CALL)

            async def queued_and_snapshot_taken() -> bool | None:
                state = first.runs.get(run_id)
                queued = state is not None and state.tasks["x"].status == QUEUED
                return True if queued and first.snapshot_keeper.taken > taken else None

            await eventually(queued_and_snapshot_taken, what="x queued in memory, a snapshot")
        snapshot = stored_snapshot(server)
        assert snapshot is not None
        assert {run.run_id for run in snapshot.runs} == set(others)
        assert snapshot.replay_from == first_seq
        server.faults.failing_appends = server.faults.failing_dispatches = 0
        await release_held(bp, release, others)
        async with stand_in_agent(bp, queue="later"), running_orchestrator(connect) as restarted:
            events = await until_end(bp, run_id)
            for other in others:
                assert_ran_once_each(await until_end(bp, other))
    assert queued_attempts(events) == [("x", 1)]
    assert restarted.replay_from == first_seq


async def test_only_runs_that_changed_are_encoded_again(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    async with held_agent(bp), running_orchestrator(connect) as orch:
        await open_long_runs(bp)
        await snapshot_current(server, bp)
        with structlog.testing.capture_logs() as logs:
            await until_end(bp, await schedule(bp, defs(TaskDef(id="x", command="true")), "x"))
            await snapshot_current(server, bp)
        assert orch.snapshot_keeper.copies.keys() == orch.runs.keys()
    taken = [entry for entry in logs if entry["event"] == "orchestrator.snapshot_taken"]
    assert taken and all(entry["encoded"] <= 1 for entry in taken)
    assert taken[-1]["runs"] == RUNS


# -- snapshots it cannot use ------------------------------------------------------------------


def in_json(change: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """A change to the JSON inside a stored (compressed) snapshot."""
    return lambda data: zlib.compress(change(zlib.decompress(data)))


def _unknown_task(document: bytes) -> bytes:
    doc = msgspec.json.decode(document)
    doc["runs"][0]["queued"] = ["no-such-task"]
    return msgspec.json.encode(doc)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda data: data[: len(data) // 2], "not a snapshot"),
        (lambda data: b"\x00garbage", "not a snapshot"),
        (in_json(lambda d: d[: len(d) // 2]), "not a snapshot"),
        (in_json(lambda d: d.replace(b'"version":1', b'"version":99', 1)), "version 99"),
        (in_json(lambda d: d.replace(b'"status":"running"', b'"status":"paused"', 1)), "decode"),
        (in_json(_unknown_task), "unknown tasks no-such-task"),
    ],
)
async def test_a_snapshot_that_does_not_decode_is_ignored_and_the_log_replayed(
    server: MemoryServer,
    bp: MemoryBackplane,
    connect: Connect,
    corrupt: Callable[[bytes], bytes],
    reason: str,
) -> None:
    async with held_agent(bp) as release:
        async with running_orchestrator(connect):
            run_ids = await open_long_runs(bp, 3)
            await snapshot_current(server, bp)
            checkpoint = await checkpoint_at_oldest(bp, run_ids)
        server.snapshots.objects[SNAPSHOT] = corrupt(server.snapshots.objects[SNAPSHOT])
        end = await release_held(bp, release, run_ids)
        with structlog.testing.capture_logs() as logs:
            async with running_orchestrator(connect) as restarted:
                for run_id in run_ids:
                    assert_ran_once_each(await until_end(bp, run_id))
    ignored = [entry for entry in logs if entry["event"] == "orchestrator.snapshot_ignored"]
    assert len(ignored) == 1 and ignored[0]["log_level"] == "warning"
    assert reason in ignored[0]["reason"]
    assert restarted.replay_from == checkpoint
    assert restarted.replayed == end - checkpoint + 1


async def test_a_snapshot_of_another_log_is_ignored(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    """A snapshot that covers more of the log than there is (the stream was created again) is
    not this log's: ignored, the log is replayed."""
    x = defs(TaskDef(id="x", command="true"))
    run_id = await schedule(bp, x, "x")
    server.snapshots.objects[SNAPSHOT] = encode_snapshot(
        taken_at=dt.datetime.now(dt.UTC), replay_from=1000, runs=[]
    )
    with structlog.testing.capture_logs() as logs:
        async with stand_in_agent(bp), running_orchestrator(connect) as orch:
            events = await until_end(bp, run_id)
    assert isinstance(events[-1], RunSucceeded)
    assert orch.replay_from == 1
    ignored = [entry for entry in logs if entry["event"] == "orchestrator.snapshot_ignored"]
    assert len(ignored) == 1 and "past the log's end" in ignored[0]["reason"]


async def test_a_snapshot_that_cannot_be_read_is_ignored_and_the_log_replayed(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    async with held_agent(bp) as release:
        async with running_orchestrator(connect):
            run_ids = await open_long_runs(bp, 2)
            await snapshot_current(server, bp)
            checkpoint = await checkpoint_at_oldest(bp, run_ids)
        end = await release_held(bp, release, run_ids)
        server.faults.fail_snapshot_calls(1)  # the restarted orchestrator's get
        with structlog.testing.capture_logs() as logs:
            async with running_orchestrator(connect) as restarted:
                for run_id in run_ids:
                    assert_ran_once_each(await until_end(bp, run_id))
    assert any(entry["event"] == "orchestrator.snapshot_unavailable" for entry in logs)
    assert restarted.replay_from == checkpoint
    assert restarted.replayed == end - checkpoint + 1


async def test_snapshots_that_cannot_be_written_do_not_stop_the_orchestrator(
    server: MemoryServer, bp: MemoryBackplane, connect: Connect
) -> None:
    server.faults.fail_snapshot_calls(EVERY_CALL)
    async with held_agent(bp) as release, running_orchestrator(connect) as orch:
        run_ids = await open_long_runs(bp, 2)
        assert stored_snapshot(server) is None and orch.snapshot_keeper.taken == 0
        server.faults.failing_snapshot_calls = 0
        await snapshot_current(server, bp)  # the loop is still there
        release.set()
        for run_id in run_ids:
            assert_ran_once_each(await until_end(bp, run_id))
