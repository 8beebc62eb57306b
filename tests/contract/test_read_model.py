"""The read model's contract, written once for every store (projections.protocol.ReadModel).

`ReadModelContract` is the suite; it is collected once per store through a subclass that
provides the `stores` fixture: an object whose `async open()` returns a new `ReadModel` over one
storage private to the test (the first one opened finds it empty; each later one is another
connection to the same rows, with a cold cache, as a restarted projector would be). Property
examples close the stores they open (`stores.close(store)`); the fixture closes the rest.
Adding a store is a subclass, here or in a module of its own (`ReadModelContract` is not
collected by itself), e.g.:

    class TestReadModelOnRedis(ReadModelContract):
        @pytest.fixture
        async def stores(self, redis_url: str) -> AsyncIterator[Stores]:
            prefix = f"cxtest:{uuid.uuid4().hex}"  # a fresh installation per test
            async with Opened(lambda: RedisReadModel(redis_url, prefix=prefix)) as stores:
                yield stores

Generated streams come from the simulation that checks core's own invariants
(tests/unit/core/test_run_properties.py: a deduplicating log, a lagging and crashing orchestrator,
agents that are redelivered, report stale attempts and fail), several runs interleaved, with
duplicates past the deduplication window, cancel requests, unreadable entries and events of
runs never scheduled mixed in. The oracle is `core.run.replay` of the same stream. Property tests
reset the store per example (`reset()`), so a store's fixture may be shared by the examples.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.events import (
    AnyEvent,
    EvaluationResult,
    GraphExtended,
    RunCancelRequested,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskCancelled,
    TaskFailed,
    TaskQueued,
    TaskRetryScheduled,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    each_queued,
    encode,
)
from core.run import QUEUED_PER_EVENT, RunStatus, TaskStatus, advance, fold, replay, run_summary
from core.snapshots import RetrySpec, TaskNode
from projections.memory import MemoryReadModel, MemoryTables
from projections.protocol import Entry, ReadModel, decode_entry
from projections.views import RunFilter, RunRow
from tests import hypothesis_profiles  # noqa: F401 - the profile, before PROPERTY reads it
from tests.unit.core.test_run_properties import simulate

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# A fifth of the profile's examples (dev 30, ci 300): an example costs a store with I/O about
# a millisecond per event, and the suite runs once per store.
PROPERTY = settings(
    # differing_executors: one property, inherited by a subclass per store (the contract's
    # point); each subclass gives it its own store through the fixture, nothing else differs.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
    max_examples=max(10, settings().max_examples // 10),  # (a store round trip per event)
)


class Opened:
    """`stores` for a store class: opens instances over one storage, closes them all."""

    def __init__(self, factory: Callable[[], ReadModel]) -> None:
        self._factory = factory
        self._opened: list[ReadModel] = []

    async def open(self) -> ReadModel:
        store = self._factory()
        self._opened.append(store)
        return store

    async def close(self, store: ReadModel) -> None:
        """Close one store now (a property example closes what it opened)."""
        self._opened.remove(store)
        await store.close()

    async def __aenter__(self) -> Opened:
        return self

    async def __aexit__(self, *_: object) -> None:
        for store in self._opened:
            await store.close()


Stores = Opened


# -- streams ------------------------------------------------------------------------------------


def run_log(rnd: random.Random, run_id: str, rerun_of: str | None = None) -> list[AnyEvent]:
    """One run's log from core's simulation, renamed; sometimes cut short (the run still open),
    sometimes with a cancel request from someone; a rerun of `rerun_of` if given."""
    world = simulate(rnd.randrange(2**32), rnd.randint(1, 10), rnd.choice((0.0, 0.2, 0.5)), 120)
    log = [msgspec.structs.replace(e, run_id=run_id) for e in world.log]
    if rerun_of is not None:
        log[0] = msgspec.structs.replace(log[0], rerun_of=rerun_of)
    if rnd.random() < 0.2:
        at = rnd.randrange(1, len(log) + 1)
        log.insert(at, RunCancelRequested(run_id=run_id, ts=T0, reason="stop", by="alice"))
    if rnd.random() < 0.4:
        log = log[: rnd.randint(1, len(log))]
    return log


def stream(seed: int, runs: int) -> list[Entry]:
    """Several runs interleaved, each in its own order (every second one a rerun of the one
    before it); duplicates past the deduplication window, unreadable entries (None) and a run
    never scheduled mixed in; sequences with gaps."""
    rnd = random.Random(seed)
    # Every second run is a rerun of the one before it (chosen without drawing from `rnd`, so
    # a seed gives the same stream as before reruns were linked).
    logs = [
        run_log(rnd, f"run-{seed % 1000}-{i}", f"run-{seed % 1000}-{i - 1}" if i % 2 else None)
        for i in range(runs)
    ]
    logs.append([TaskStarted(run_id="ghost", ts=T0, task_id="t0", attempt=1, agent_id="a")])
    merged: list[AnyEvent | None] = []
    cursors = [0] * len(logs)
    while any(c < len(log) for c, log in zip(cursors, logs, strict=True)):
        i = rnd.choice([i for i, log in enumerate(logs) if cursors[i] < len(log)])
        merged.append(logs[i][cursors[i]])
        cursors[i] += 1
        roll = rnd.random()
        if roll < 0.05:
            merged.append(rnd.choice(merged))  # a duplicate stored again, late
        elif roll < 0.07:
            merged.append(None)
    entries: list[Entry] = []
    seq = 0
    for event in merged:
        seq += rnd.choice((1, 1, 1, 2))
        entries.append((seq, event))
    return entries


def splits(rnd: random.Random, entries: Sequence[Entry]) -> list[list[Entry]]:
    """The entries cut into batches of random sizes, each sometimes starting a little before
    the previous one ended (a redelivery of what was already applied)."""
    batches: list[list[Entry]] = []
    i = 0
    while i < len(entries):
        size = rnd.choice((1, 1, 2, 5, 17, 100))
        start = max(0, i - rnd.choice((0, 0, 0, 3)))
        batches.append(list(entries[start : i + size]))
        i += size
    return batches


async def apply_all(store: ReadModel, batches: Sequence[Sequence[Entry]]) -> None:
    for batch in batches:
        await store.apply_batch(batch)


async def everything(store: ReadModel) -> dict[str, Any]:
    """All a store holds, read through the protocol only."""
    runs = await all_runs(store, RunFilter(), page=7)
    out: dict[str, Any] = {
        "checkpoint": await store.checkpoint(),
        "counts": await store.count_runs(),
        "runs": [r.run_id for r in runs],
    }
    for row in runs:
        detail = await store.get_run(row.run_id)
        assert detail is not None
        attempts = {
            t.task_id: await store.task_attempts(row.run_id, t.task_id) for t in detail.tasks
        }
        events: list[Any] = []
        while page := await store.recent_events(row.run_id, events[-1].seq if events else 0, 9):
            seqs = [e.seq for e in page]
            assert seqs == sorted(set(seqs)) and seqs[0] > (events[-1].seq if events else 0)
            events.extend(page)
        out[row.run_id] = (detail, attempts, events)
    return out


async def all_runs(store: ReadModel, where: RunFilter, page: int) -> list[RunRow]:
    found: list[RunRow] = []
    cursor: str | None = None
    while True:
        got = await store.list_runs(where, page, cursor)
        found.extend(got.items)
        if got.next_cursor is None:
            return found
        cursor = got.next_cursor


async def assert_agrees_with_core(store: ReadModel, entries: Sequence[Entry]) -> None:
    expected = replay(e for _, e in entries if e is not None)
    first: dict[str, RunScheduled] = {}
    for _, e in entries:
        if isinstance(e, RunScheduled):
            first.setdefault(e.run_id, e)
    assert await store.checkpoint() == entries[-1][0]
    runs = {r.run_id: r for r in await all_runs(store, RunFilter(), page=50)}
    assert set(runs) == set(expected)
    totals = collections.Counter(run_summary(s).status for s in expected.values())
    assert await store.count_runs() == {s: totals[s] for s in RunStatus}
    for run_id, state in expected.items():
        row, summary = runs[run_id], run_summary(state)
        assert row.status == summary.status, run_id
        statuses = collections.Counter(summary.tasks.values())
        assert row.counts == {s: statuses[s] for s in TaskStatus}
        assert row.tasks_total == len(state.tasks)
        assert row.failed_tasks == tuple(state.failed_tasks)
        assert (row.cancel_requested, row.ended_at) == (state.cancel_requested, state.ended_at)
        assert row.rerun_of == first[run_id].rerun_of
        detail = await store.get_run(run_id)
        assert detail is not None
        assert [n.id for n in detail.graph] == list(state.tasks)
        got = {t.task_id: (t.status, t.attempt, t.agent_id, t.exit_code) for t in detail.tasks}
        assert got == {
            k: (t.status, t.attempt, t.agent_id, t.exit_code) for k, t in state.tasks.items()
        }
        events = await store.recent_events(run_id, 0, 10_000)
        assert [e.seq for e in events] == [s for s, e in entries if e and e.run_id == run_id]
        for task_id, task in state.tasks.items():
            attempts = await store.task_attempts(run_id, task_id)
            assert [a.attempt for a in attempts] == list(range(1, len(attempts) + 1))
            assert len(attempts) in (task.attempt, task.attempt - 1)


# -- the contract -------------------------------------------------------------------------------


class ReadModelContract:
    """What every read-model store must do; a subclass provides the `stores` fixture (see the
    module docstring)."""

    pytestmark: ClassVar = [pytest.mark.contract]

    @pytest.fixture
    async def read_model(self, stores: Stores) -> ReadModel:
        return await stores.open()

    # -- agreement with core ---------------------------------------------------------------------

    @PROPERTY
    @given(seed=st.integers(0, 2**32), runs=st.integers(1, 4))
    async def test_a_generated_stream_reads_as_core_folds_it_in_any_batches(
        self, read_model: ReadModel, seed: int, runs: int
    ) -> None:
        await read_model.reset()
        entries = stream(seed, runs)
        await apply_all(read_model, splits(random.Random(seed), entries))
        await assert_agrees_with_core(read_model, entries)
        batched = await everything(read_model)
        await read_model.reset()
        await apply_all(read_model, [[entry] for entry in entries])
        assert await everything(read_model) == batched

    @PROPERTY
    @given(seed=st.integers(0, 2**32), runs=st.integers(1, 3), data=st.data())
    async def test_a_projector_restarted_from_its_checkpoint_ends_as_a_fresh_replay(
        self, stores: Stores, seed: int, runs: int, data: st.DataObject
    ) -> None:
        first = await stores.open()
        await first.reset()
        entries = stream(seed, runs)
        await first.apply_batch(entries)
        fresh = await everything(first)
        await first.reset()
        # Killed mid-batch: what it had committed stays, the batch in flight is lost...
        cut = data.draw(st.integers(0, len(entries)), label="committed")
        await apply_all(first, splits(random.Random(seed), entries[:cut]))
        await stores.close(first)
        # ...and a new one (a cold cache) resumes from its checkpoint, or a little before.
        restarted = await stores.open()
        checkpoint = await restarted.checkpoint()
        assert checkpoint == (entries[cut - 1][0] if cut else 0)
        back = data.draw(st.integers(0, min(cut, 5)), label="redelivered")
        await apply_all(restarted, splits(random.Random(seed + 1), entries[cut - back :]))
        assert await everything(restarted) == fresh
        await stores.close(restarted)

    async def test_entries_at_or_below_the_checkpoint_change_nothing(
        self, read_model: ReadModel
    ) -> None:
        entries = stream(7, 3)
        assert await read_model.apply_batch(entries) == entries[-1][0]
        before = await everything(read_model)
        assert await read_model.apply_batch(entries) == entries[-1][0]
        assert await read_model.apply_batch(entries[::3]) == entries[-1][0]
        assert await read_model.apply_batch([]) == entries[-1][0]
        assert await everything(read_model) == before

    async def test_unreadable_entries_are_skipped_and_advance_the_checkpoint(
        self, read_model: ReadModel, caplog: pytest.LogCaptureFixture
    ) -> None:
        future = b'{"type":"TaskTeleported","run_id":"r1","ts":"2026-01-01T00:00:00Z"}'
        raw = [(1, encode(scheduled("r1", node("a")))), (2, future), (3, b"\xff not json")]
        raw.append((4, encode(queued("r1", "a"))))
        with caplog.at_level(logging.WARNING, logger="projections.protocol"):
            entries = [decode_entry(seq, data) for seq, data in raw]
        assert [e for _, e in entries][1:3] == [None, None]
        assert "seq 2" in caplog.text and "seq 3" in caplog.text
        assert await read_model.apply_batch(entries[:3]) == 3
        assert await read_model.checkpoint() == 3
        assert [e.seq for e in await read_model.recent_events("r1")] == [1]
        await read_model.apply_batch(entries[3:])
        detail = await read_model.get_run("r1")
        assert detail is not None and detail.run.status == RunStatus.RUNNING
        assert [t.status for t in detail.tasks] == [TaskStatus.QUEUED]

    # -- one run in detail -----------------------------------------------------------------------

    async def test_a_run_shows_retries_redeliveries_and_its_graph_growing(
        self, read_model: ReadModel
    ) -> None:
        a = node("a", retries=1)
        ev = TaskNode(id="ev", task_id="ev", command="decide", dependencies=("a",))
        ev = msgspec.structs.replace(ev, evaluation_point=True)
        added = TaskNode(id="x", task_id="x", command="x", dependencies=("ev",))
        at = [T0 + dt.timedelta(seconds=i) for i in range(20)]
        events: list[AnyEvent] = [
            scheduled("r1", a, ev, trigger="cron"),
            queued("r1", "a", ts=at[1]),
            TaskStarted(run_id="r1", ts=at[2], task_id="a", attempt=1, agent_id="a1"),
            TaskFailed(run_id="r1", ts=at[3], task_id="a", attempt=1, exit_code=3),
            TaskRetryScheduled(run_id="r1", ts=at[4], task_id="a", attempt=2, not_before=at[5]),
            TaskFailed(run_id="r1", ts=at[5], task_id="a", attempt=1, exit_code=4),  # stale
            queued("r1", "a", attempt=2, ts=at[6]),
            TaskStarted(run_id="r1", ts=at[7], task_id="a", attempt=2, agent_id="a1"),
            TaskStarted(run_id="r1", ts=at[8], task_id="a", attempt=2, agent_id="a2", delivery=2),
            TaskSucceeded(run_id="r1", ts=at[9], task_id="a", attempt=2, duration_ms=5.0),
            queued("r1", "ev", ts=at[10]),
            TaskSucceeded(
                run_id="r1",
                ts=at[11],
                task_id="ev",
                attempt=1,
                evaluation=evaluation("x"),
            ),
            GraphExtended(run_id="r1", ts=at[12], task_id="ev", attempt=1, nodes=(added,)),
        ]
        await read_model.apply_batch(list(enumerate(events, start=1)))
        detail = await read_model.get_run("r1")
        assert detail is not None
        assert [n.id for n in detail.graph] == ["a", "ev", "x"]
        tasks = {t.task_id: t for t in detail.tasks}
        assert [t.task_id for t in detail.tasks] == ["a", "ev", "x"]
        assert (tasks["a"].status, tasks["a"].attempt, tasks["a"].agent_id) == (
            TaskStatus.SUCCEEDED,
            2,
            "a2",
        )
        assert (tasks["a"].duration_ms, tasks["a"].max_attempts) == (5.0, 2)
        assert tasks["ev"].status == TaskStatus.SUCCEEDED
        assert tasks["x"].status == TaskStatus.PENDING
        run = detail.run
        assert (run.trigger, run.status, run.started_at, run.tasks_total) == (
            "cron",
            RunStatus.RUNNING,
            at[2],
            3,
        )
        assert run.counts[TaskStatus.SUCCEEDED] == 2 and run.counts[TaskStatus.PENDING] == 1
        assert run.last_seq == len(events) and detail.as_of_seq == len(events)
        tries = await read_model.task_attempts("r1", "a")
        assert [(t.attempt, t.status, t.exit_code, t.agent_id) for t in tries] == [
            (1, "failed", 3, "a1"),
            (2, "succeeded", 0, "a2"),
        ]
        assert (tries[1].started_at, tries[1].ended_at, tries[1].delivery) == (at[7], at[9], 2)
        [evaluated] = await read_model.task_attempts("r1", "ev")
        assert evaluated.status == "succeeded"
        history = await read_model.recent_events("r1", after_seq=4, limit=3)
        assert [(e.seq, e.type, e.task_id, e.attempt) for e in history] == [
            (5, "TaskRetryScheduled", "a", 2),
            (6, "TaskFailed", "a", 1),
            (7, "TaskQueued", "a", 2),
        ]
        assert msgspec.json.decode(history[1].body)["exit_code"] == 4

    async def test_a_cancelled_run_records_who_asked(self, read_model: ReadModel) -> None:
        events: list[AnyEvent] = [
            scheduled("r1", node("a"), node("b", "a")),
            queued("r1", "a"),
            RunCancelRequested(run_id="r1", ts=T0, reason="enough", by="alice"),
            RunCancelRequested(run_id="r1", ts=T0, reason="again", by="bob"),
            TaskCancelled(run_id="r1", ts=T0, task_id="a", attempt=1),
        ]
        await read_model.apply_batch(list(enumerate(events, start=1)))
        detail = await read_model.get_run("r1")
        assert detail is not None
        run = detail.run
        assert (run.cancel_requested, run.cancel_reason, run.cancelled_by) == (
            True,
            "enough",
            "alice",
        )
        assert run.last_seq == 5  # (the second request changed nothing)
        assert (run.counts[TaskStatus.CANCELLED], run.status) == (1, RunStatus.RUNNING)
        [attempt] = await read_model.task_attempts("r1", "a")
        assert (attempt.status, attempt.reason) == ("cancelled", "cancelled")
        assert [e.seq for e in await read_model.recent_events("r1", 2)] == [3, 4, 5]

    async def test_a_rerun_names_the_run_it_reruns_in_every_read(self, stores: Stores) -> None:
        """`rerun_of` is kept through the run's later changes, by a cold cache too, and every
        store reads back the rows the pure projection gives (the memory store keeps them as
        they are)."""
        events: list[AnyEvent] = [
            scheduled("r1", node("a"), node("b", "a")),
            queued("r1", "a"),
            TaskFailed(run_id="r1", ts=T0, task_id="a", attempt=1, exit_code=3),
            msgspec.structs.replace(
                scheduled("r2", node("a"), node("b", "a"), trigger="rerun"), rerun_of="r1"
            ),
            queued("r2", "a"),
        ]
        store = await stores.open()
        await store.apply_batch(list(enumerate(events[:4], start=1)))
        restarted = await stores.open()  # a cold cache applies the rest
        await restarted.apply_batch([(5, events[4])])
        oracle = MemoryReadModel(MemoryTables())
        await oracle.apply_batch(list(enumerate(events, start=1)))
        for reader in (store, restarted):
            page = await reader.list_runs(RunFilter())
            assert [(r.run_id, r.rerun_of) for r in page.items] == [("r2", "r1"), ("r1", None)]
            assert page == await oracle.list_runs(RunFilter())
            reruns = await reader.list_runs(RunFilter(trigger="rerun"))
            assert [(r.run_id, r.rerun_of) for r in reruns.items] == [("r2", "r1")]
            for run_id in ("r1", "r2"):
                detail, expected = await reader.get_run(run_id), await oracle.get_run(run_id)
                assert detail is not None and expected is not None
                assert detail.run == expected.run
            detail = await reader.get_run("r2")
            assert detail is not None
            assert (detail.run.rerun_of, detail.run.status, detail.run.last_seq) == (
                "r1",
                RunStatus.RUNNING,
                5,
            )

    async def test_who_requested_a_run_and_its_cancel_is_kept_in_every_read(
        self, stores: Stores
    ) -> None:
        """`requested_by` of a RunScheduled (and of its cancel request: `cancelled_by`) is on
        the run's row through its later changes, by a cold cache too; a run nobody known asked
        for (an older event, a trigger) has none."""
        events: list[AnyEvent] = [
            msgspec.structs.replace(scheduled("r1", node("a"), node("b", "a")), requested_by="ana"),
            scheduled("r2", node("a")),
            queued("r1", "a"),
            RunCancelRequested(run_id="r1", ts=T0, reason="", by="api", requested_by="token:ci"),
        ]
        store = await stores.open()
        await store.apply_batch(list(enumerate(events[:2], start=1)))
        restarted = await stores.open()  # a cold cache applies the rest
        await restarted.apply_batch(list(enumerate(events[2:], start=3)))
        oracle = MemoryReadModel(MemoryTables())
        await oracle.apply_batch(list(enumerate(events, start=1)))
        for reader in (store, restarted):
            page = await reader.list_runs(RunFilter())
            assert [(r.run_id, r.requested_by) for r in page.items] == [
                ("r2", None),
                ("r1", "ana"),
            ]
            assert page == await oracle.list_runs(RunFilter())
            detail = await reader.get_run("r1")
            assert detail is not None
            assert (detail.run.requested_by, detail.run.cancelled_by, detail.run.last_seq) == (
                "ana",
                "token:ci",
                4,
            )

    async def test_a_large_run_queued_a_thousand_attempts_an_event_reads_as_core(
        self, stores: Stores
    ) -> None:
        """A run's start queues every ready task in TasksQueued events of up to
        QUEUED_PER_EVENT attempts: each attempt gets its row, in any batches, as core folds it
        (and as the older one-TaskQueued-per-attempt log of the same run)."""
        graph = [node(f"t{i:04d}") for i in range(2 * QUEUED_PER_EVENT + 500)]
        state = fold(None, scheduled("big", *graph))
        assert state is not None
        decided = advance(state, T0)
        assert [len(e.tasks) for e in decided if isinstance(e, TasksQueued)] == [
            QUEUED_PER_EVENT,
            QUEUED_PER_EVENT,
            500,
        ]
        started = TaskStarted(run_id="big", ts=T0, task_id="t1234", attempt=1, agent_id="a")
        new: list[AnyEvent] = [scheduled("big", *graph), *decided, started]
        old = [new[0], *(q for e in decided for q in each_queued(e)), started]
        store, older = await stores.open(), await stores.open()
        await store.apply_batch(list(enumerate(new[:2], start=1)))
        await store.apply_batch(list(enumerate(new, start=1))[1:])  # (a redelivery of seq 2)
        entries = list(enumerate(new, start=1))
        await assert_agrees_with_core(store, entries)
        detail = await store.get_run("big")
        assert detail is not None
        queued_rows = [t for t in detail.tasks if t.status == TaskStatus.QUEUED]
        assert len(queued_rows) == len(graph) - 1
        assert {t.queued_at for t in queued_rows} == {T0}
        [attempt] = await store.task_attempts("big", "t0007")
        assert (attempt.status, attempt.queued_at) == ("queued", T0)
        await older.reset()
        await older.apply_batch(list(enumerate(old, start=1)))
        then = await older.get_run("big")
        assert then is not None
        assert [(t.task_id, t.status, t.attempt) for t in then.tasks] == [
            (t.task_id, t.status, t.attempt) for t in detail.tasks
        ]

    # -- lists ---------------------------------------------------------------------------------

    async def test_filters_select_runs_and_counts_agree_with_them(
        self, read_model: ReadModel
    ) -> None:
        rnd = random.Random(3)
        events: list[AnyEvent] = []
        for i in range(40):
            run_id = f"r{i:02}"
            kind: Literal["dag", "outcome"] = "dag" if rnd.random() < 0.5 else "outcome"
            graph = (node("a"), node(rnd.choice(("b", "c")), "a"))
            events.append(
                RunScheduled(
                    run_id=run_id,
                    ts=T0 + dt.timedelta(minutes=i),
                    kind=kind,
                    target=rnd.choice(("etl", "report")),
                    name=run_id,
                    graph=graph,
                    trigger=rnd.choice(("cli", "cron")),
                )
            )
            fate = rnd.choice(("scheduled", "running", "succeeded", "failed"))
            if fate != "scheduled":
                events.append(queued(run_id, "a"))
            if fate == "succeeded":
                events.append(RunSucceeded(run_id=run_id, ts=T0))
            if fate == "failed":
                events.append(RunFailed(run_id=run_id, ts=T0))
        entries = list(enumerate(events, start=1))
        await read_model.apply_batch(entries)
        states = replay(events)
        scheduled_events = [e for e in events if isinstance(e, RunScheduled)]
        filters = [
            RunFilter(),
            RunFilter(status=RunStatus.FAILED),
            RunFilter(status=RunStatus.SCHEDULED, kind="dag"),
            RunFilter(target="etl", trigger="cron"),
            RunFilter(task="c"),
            RunFilter(task="a", status=RunStatus.RUNNING),
            RunFilter(since=T0 + dt.timedelta(minutes=10), until=T0 + dt.timedelta(minutes=20)),
            RunFilter(target="nothing"),
        ]
        for where in filters:
            expected = [
                e.run_id
                for e in reversed(scheduled_events)
                if (where.kind is None or e.kind == where.kind)
                and (where.target is None or e.target == where.target)
                and (where.trigger is None or e.trigger == where.trigger)
                and (where.task is None or any(n.task_id == where.task for n in e.graph))
                and (where.since is None or e.ts >= where.since)
                and (where.until is None or e.ts < where.until)
            ]
            by_status = collections.Counter(run_summary(states[r]).status for r in expected)
            if where.status is not None:
                expected = [r for r in expected if run_summary(states[r]).status == where.status]
            for page in (1, 3, 100):
                found = await all_runs(read_model, where, page)
                assert [r.run_id for r in found] == expected, (where, page)
            counts = await read_model.count_runs(where)
            assert counts == {s: by_status[s] for s in RunStatus}, where

    async def test_pages_neither_repeat_nor_skip_runs_inserted_while_paging(
        self, read_model: ReadModel
    ) -> None:
        seq = 0

        async def schedule(run_id: str) -> None:
            nonlocal seq
            seq += 1
            await read_model.apply_batch([(seq, scheduled(run_id, node("a")))])

        for i in range(23):
            await schedule(f"old-{i}")
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = await read_model.list_runs(RunFilter(), 4, cursor)
            assert 0 < len(page.items) <= 4
            seen.extend(r.run_id for r in page.items)
            for j in range(2):
                await schedule(f"new-{len(seen)}-{j}")
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [f"old-{i}" for i in reversed(range(23))]
        newest = await read_model.list_runs(RunFilter(), 1)
        assert newest.items[0].run_id == f"new-{len(seen)}-1"
        with pytest.raises(ValueError, match="cursor"):
            await read_model.list_runs(RunFilter(), 4, "nonsense")

    # -- waiting, resetting, nothing there -------------------------------------------------------

    async def test_a_reader_can_wait_for_a_sequence(self, read_model: ReadModel) -> None:
        assert await read_model.wait_for(0, timeout=0.01)
        assert not await read_model.wait_for(2, timeout=0.05)
        waiting = asyncio.ensure_future(read_model.wait_for(2, timeout=5))
        await asyncio.sleep(0.01)
        await read_model.apply_batch([(1, scheduled("r1", node("a")))])
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await read_model.apply_batch([(2, queued("r1", "a"))])
        assert await waiting
        detail = await read_model.get_run("r1")
        assert detail is not None and detail.run.status == RunStatus.RUNNING

    async def test_reset_forgets_every_row_and_the_checkpoint(self, read_model: ReadModel) -> None:
        await read_model.apply_batch(stream(11, 2))
        await read_model.reset()
        assert await read_model.checkpoint() == 0
        assert (await read_model.list_runs()).items == ()
        assert await read_model.count_runs() == dict.fromkeys(RunStatus, 0)
        assert await read_model.recent_events("ghost") == ()
        await read_model.apply_batch([(1, scheduled("r1", node("a")))])
        assert [r.run_id for r in (await read_model.list_runs()).items] == ["r1"]

    async def test_an_empty_store_answers_every_query(self, read_model: ReadModel) -> None:
        assert await read_model.checkpoint() == 0
        assert await read_model.get_run("nope") is None
        assert await read_model.task_attempts("nope", "a") == ()
        assert await read_model.recent_events("nope") == ()
        page = await read_model.list_runs(RunFilter(status=RunStatus.FAILED), 10)
        assert (page.items, page.next_cursor) == ((), None)


# -- building blocks ----------------------------------------------------------------------------


def node(node_id: str, *deps: str, retries: int = 0) -> TaskNode:
    return TaskNode(
        id=node_id,
        task_id=node_id,
        command=f"echo {node_id}",
        dependencies=deps,
        retries=RetrySpec(count=retries, delay_seconds=1),
    )


def scheduled(run_id: str, *graph: TaskNode, trigger: str = "cli") -> RunScheduled:
    return RunScheduled(
        run_id=run_id, ts=T0, kind="dag", target="g", name="g", graph=graph, trigger=trigger
    )


def queued(run_id: str, task_id: str, attempt: int = 1, ts: dt.datetime = T0) -> TaskQueued:
    return TaskQueued(run_id=run_id, ts=ts, task_id=task_id, attempt=attempt, queue="default")


def evaluation(*next_tasks: str) -> EvaluationResult:
    return EvaluationResult(next_tasks=next_tasks)


# -- the stores ---------------------------------------------------------------------------------


class TestReadModelOnMemory(ReadModelContract):
    @pytest.fixture
    async def stores(self) -> AsyncIterator[Stores]:
        tables = MemoryTables()
        async with Opened(lambda: MemoryReadModel(tables)) as stores:
            yield stores
