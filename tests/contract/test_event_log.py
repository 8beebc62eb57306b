"""The event log's contract: sequences, deduplication, conditional appends, reading and
following, on the in-memory fake and on NATS."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest

from core.errors import Conflict, Unavailable
from core.events import AnyEvent, GraphExtended, RunFailed, RunScheduled, TaskFailed, TaskStarted
from core.snapshots import RetrySpec, TaskNode
from services.ports import Backplane, RunExists
from tests.contract.harness import (
    NOW,
    Contract,
    Harness,
    OnMemory,
    OnNats,
    queued,
    run_succeeded,
    scheduled,
    started,
    succeeded,
    take,
)
from tests.waiting import eventually

T = TypeVar("T")


class EventLogContract(Contract):
    # -- appending ------------------------------------------------------------------------------

    async def test_sequences_increase_across_the_whole_log(self, bp: Backplane) -> None:
        log = bp.events
        assert await log.last_seq() == 0
        seqs = [
            await log.append(started("r1", "t1")),
            await log.append(started("r2", "t1")),
            await log.append(started("r1", "t2")),
        ]
        assert seqs == [1, 2, 3]
        assert await log.last_seq() == 3

    async def test_the_same_event_twice_is_stored_once(self, bp: Backplane) -> None:
        log = bp.events
        event = started("r1", "t1")
        first = await log.append(event)
        assert await log.append(event) == first
        assert await log.append_nowait(event) == first
        await log.append(started("r1", "t2"))
        assert await log.append(event) == first  # still recognised after later appends
        assert [s for s, _ in await log.history("r1")] == [first, first + 1]
        assert await log.last_seq() == first + 1

    async def test_deduplication_is_by_message_id(self, bp: Backplane) -> None:
        # Same run, task, attempt and delivery: the same fact, even if a field differs.
        log = bp.events
        first = await log.append(started("r1", "t1", agent_id="a1"))
        assert await log.append(started("r1", "t1", agent_id="a2")) == first
        [(_, stored)] = await log.history("r1")
        assert isinstance(stored, TaskStarted) and stored.agent_id == "a1"
        # ...while another delivery or attempt is another fact.
        redelivered = TaskStarted(
            run_id="r1", ts=NOW, task_id="t1", attempt=1, agent_id="a2", delivery=2
        )
        assert await log.append(redelivered) == first + 1
        assert await log.append(started("r1", "t1", attempt=2)) == first + 2

    async def test_pipelined_appends_keep_call_order(self, bp: Backplane) -> None:
        log = bp.events
        events: list[AnyEvent] = [started(f"r{i % 3}", f"t{i}") for i in range(60)]
        futures = [log.append_nowait(e) for e in events]
        await log.flush()
        seqs = [f.result() for f in futures]
        assert seqs == list(range(1, 61))
        for run in ("r0", "r1", "r2"):
            assert [e for _, e in await log.history(run)] == [e for e in events if e.run_id == run]
        await log.flush()  # nothing pending: returns at once

    async def test_events_round_trip_exactly(self, bp: Backplane) -> None:
        node = TaskNode(
            id="train:large",
            task_id="train",
            command='echo "$MODEL"',
            name="Train ✓",
            queue="gpu",
            dependencies=("prepare",),
            parameters={"MODEL": "resnet", "EMPTY": ""},
            retries=RetrySpec(count=2, delay_seconds=1.5, backoff=3.0, max_delay_seconds=60),
            timeout_seconds=600.5,
            evaluation_point=True,
        )
        events: list[AnyEvent] = [
            RunScheduled(
                run_id="r1",
                ts=dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.UTC),
                kind="outcome",
                target="train",
                name="Train — ünïcode",
                graph=(node,),
                context={"DATE": "2026-03-04"},
                context_id="prod",
                params={"train.MODEL": "vit"},
                idempotency_key="k1",
            ),
            GraphExtended(run_id="r1", ts=NOW, task_id="train:large", attempt=1, nodes=(node,)),
            TaskFailed(
                run_id="r1",
                ts=NOW,
                task_id="train:large",
                attempt=1,
                reason="timeout",
                exit_code=None,
                output_tail="line\n\x00\ttab",
            ),
            RunFailed(run_id="r1", ts=NOW, reason="failed", failed_tasks=("train:large",)),
        ]
        for event in events:
            await bp.events.append(event)
        assert [e for _, e in await bp.events.history("r1")] == events

    async def test_close_stores_what_was_pipelined_then_refuses(self, bp: Backplane) -> None:
        await bp.events.append(started("r1", "t1"))
        pipelined = bp.events.append_nowait(started("r1", "t2"))
        was_open = not bp.closed
        await bp.close()
        assert was_open and bp.closed
        assert await pipelined == 2
        with pytest.raises(Unavailable):
            await bp.events.append(started("r1", "t3"))
        with pytest.raises(Unavailable):  # (raised at once, or by the future)
            await bp.events.append_nowait(started("r1", "t3"))
        await bp.close()  # closing twice is fine

    async def test_every_connection_sees_one_log(self, bp: Backplane, harness: Harness) -> None:
        other = await harness.connect("another-process")
        assert other.url and not other.closed
        live = asyncio.create_task(take(other.events.tail(run_id="r1"), 2))
        await bp.events.append(started("r1", "t1"))
        assert await other.events.append(started("r1", "t1")) == 1  # deduplicated across them
        await bp.events.append(started("r1", "t2"))
        assert [s for s, _, _ in await live] == [1, 2]
        assert await other.events.last_seq() == 2

    # -- conditional appends --------------------------------------------------------------------

    async def test_append_expected_stores_when_nothing_came_between(self, bp: Backplane) -> None:
        log = bp.events
        await log.append(started("other", "t1"))
        first = await log.append(scheduled("r1"))
        second = await log.append_expected(queued("r1", "t1"), first)
        assert second == first + 1
        assert await log.append_expected(started("r2", "t1"), 0) == second + 1  # a new run
        assert [e for _, e in await log.history("r1")] == [scheduled("r1"), queued("r1", "t1")]

    async def test_append_expected_conflicts_when_someone_appended(self, bp: Backplane) -> None:
        log = bp.events
        first = await log.append(scheduled("r1"))
        second = await log.append(queued("r1", "t1"))
        with pytest.raises(Conflict):
            await log.append_expected(started("r1", "t1"), first)
        with pytest.raises(Conflict):
            await log.append_expected(started("r1", "t1"), 0)
        with pytest.raises(Conflict):
            await log.append_expected(started("r1", "t1"), second + 5)  # not there yet
        await log.append(started("r2", "t1"))  # other runs do not count
        assert await log.append_expected(started("r1", "t1"), second) == second + 2
        assert len(await log.history("r1")) == 3

    async def test_own_earlier_conditional_append_counts_as_success(self, bp: Backplane) -> None:
        # A retry after a lost ack: the append is there already, so its expected sequence is
        # stale, yet it is ours.
        log = bp.events
        first = await log.append(scheduled("r1"))
        event = queued("r1", "t1")
        second = await log.append_expected(event, first)
        assert await log.append_expected(event, first) == second
        assert len(await log.history("r1")) == 2
        await log.append(started("r1", "t1"))
        assert await log.append_expected(event, first) == second  # still ours: next after `first`

    async def test_same_id_with_other_bytes_is_not_our_append(self, bp: Backplane) -> None:
        log = bp.events
        first = await log.append(scheduled("r1"))
        await log.append_expected(queued("r1", "t1", queue="default"), first)
        with pytest.raises(Conflict):
            await log.append_expected(queued("r1", "t1", queue="gpu"), first)
        [_, (_, stored)] = await log.history("r1")
        assert stored == queued("r1", "t1", queue="default")

    async def test_expected_sequence_met_but_id_taken_by_other_bytes_conflicts(
        self, bp: Backplane
    ) -> None:
        # Two agents holding the same delivery (a restarted server handed it out again) write
        # starts with one msg id: the second reads the first as the newest event, so its
        # expected sequence holds, and only deduplication meets it. It is not its append.
        log = bp.events
        await log.append(scheduled("r1"))
        theirs = started("r1", "t1", agent_id="agent-a")
        newest = await log.append(theirs)
        with pytest.raises(Conflict):
            await log.append_expected(started("r1", "t1", agent_id="agent-b"), newest)
        assert await log.append_expected(theirs, newest) == newest  # the same bytes: theirs
        assert [e for _, e in await log.history("r1")][-1] == theirs

    async def test_schedule_run_uses_a_run_id_once(self, bp: Backplane) -> None:
        log = bp.events
        event = scheduled("r1")
        seq = await log.schedule_run(event)
        await log.append(started("r1", "t1"))
        assert await log.schedule_run(event) == seq  # our own retry: nothing stored
        with pytest.raises(RunExists) as caught:
            await log.schedule_run(scheduled("r1", name="another"))
        assert caught.value.run_id == "r1"
        assert isinstance(caught.value, Conflict)
        assert len(await log.history("r1")) == 2
        assert await log.schedule_run(scheduled("r2")) == seq + 2

    # -- reading --------------------------------------------------------------------------------

    async def test_history_is_one_run_in_order(self, bp: Backplane) -> None:
        log = bp.events
        for i in range(5):
            await log.append(started("r1", f"t{i}"))
            await log.append(started("r2", f"t{i}"))
        history = await log.history("r1")
        assert [e for _, e in history] == [started("r1", f"t{i}") for i in range(5)]
        assert [s for s, _ in history] == [1, 3, 5, 7, 9]
        assert await log.history("never-scheduled") == []

    async def test_first_seq_and_last_event_of_a_run(self, bp: Backplane) -> None:
        log = bp.events
        assert await log.first_seq("r1") is None
        assert await log.last_event("r1") is None
        await log.append(started("r2", "t0"))
        first = await log.append(scheduled("r1"))
        await log.append(started("r2", "t1"))
        assert await log.first_seq("r1") == first
        assert await log.last_event("r1") == (first, scheduled("r1"))
        last = await log.append(succeeded("r1", "t1"))
        await log.append(started("r2", "t2"))
        assert await log.first_seq("r1") == first
        assert await log.last_event("r1") == (last, succeeded("r1", "t1"))
        assert await log.first_seq("r2") == 1

    async def test_first_seq_counts_and_last_event_skips_what_does_not_decode(
        self, bp: Backplane, harness: Harness
    ) -> None:
        log = bp.events
        await log.append(started("other", "t0"))
        await harness.inject_event_bytes("r1", b"not an event")
        seq = await log.append(scheduled("r1"))
        assert await log.first_seq("r1") == seq - 1  # the foreign message came first
        assert await log.last_event("r1") == (seq, scheduled("r1"))
        await harness.inject_event_bytes("r1", b'{"type": "NoSuchEvent", "run_id": "r1"}')
        assert await log.last_event("r1") is None  # the newest cannot be read: unknown

    async def test_tail_gives_stored_then_live_events_until_stopped(self, bp: Backplane) -> None:
        log = bp.events
        for i in range(3):
            await log.append(started(f"r{i}", "t0"))
        stop = asyncio.Event()
        received: asyncio.Queue[tuple[int, AnyEvent, int]] = asyncio.Queue()

        async def follow() -> None:
            async for item in log.tail(stop=stop):
                received.put_nowait(item)

        reader = asyncio.create_task(follow())
        stored = [await asyncio.wait_for(received.get(), 10) for _ in range(3)]
        assert [(s, p) for s, _, p in stored] == [(1, 2), (2, 1), (3, 0)]  # 0: caught up
        await log.append(started("r1", "t1"))
        seq, event, pending = await asyncio.wait_for(received.get(), 10)
        assert (seq, event, pending) == (4, started("r1", "t1"), 0)
        stop.set()
        await asyncio.wait_for(reader, 10)
        assert received.empty()

    async def test_tail_resumes_from_a_sequence(self, bp: Backplane) -> None:
        log = bp.events
        events = [started("r1", f"t{i}") for i in range(5)]
        for event in events:
            await log.append(event)
        resumed = await take(log.tail(from_seq=3), 3)
        assert [(s, e, p) for s, e, p in resumed] == [
            (3, events[2], 2),
            (4, events[3], 1),
            (5, events[4], 0),
        ]
        stop = asyncio.Event()
        later = asyncio.create_task(take(log.tail(from_seq=7, stop=stop), 1))
        await log.append(started("r1", "t5"))  # seq 6: before the resume point
        await log.append(started("r1", "t6"))  # seq 7
        assert [s for s, _, _ in await later] == [7]

    async def test_tail_of_one_run(self, bp: Backplane) -> None:
        log = bp.events
        for i in range(3):
            await log.append(started("r1", f"t{i}"))
            await log.append(started("r2", f"t{i}"))
        items = await take(log.tail(run_id="r2"), 3)
        assert [(s, p) for s, _, p in items] == [(2, 2), (4, 1), (6, 0)]
        assert {e.run_id for _, e, _ in items} == {"r2"}
        assert [s for s, _, _ in await take(log.tail(run_id="r1", from_seq=2), 2)] == [3, 5]
        live = asyncio.create_task(take(log.tail(run_id="r3"), 1))
        await log.append(started("r1", "t9"))
        await log.append(started("r3", "t0"))
        [(seq, event, pending)] = await live
        assert (seq, event.run_id, pending) == (8, "r3", 0)

    async def test_stop_ends_a_tail(self, bp: Backplane) -> None:
        log = bp.events
        await log.append(started("r1", "t0"))
        stopped = asyncio.Event()
        stopped.set()
        assert [item async for item in log.tail(stop=stopped)] == []

        stop = asyncio.Event()
        seen: list[int] = []

        async def follow() -> None:
            async for seq, _, _ in log.tail(stop=stop):
                seen.append(seq)

        reader = asyncio.create_task(follow())
        await eventually(lambda: _true(seen == [1]), timeout=10, what="the tail to catch up")
        await asyncio.sleep(0.1)
        assert not reader.done()  # caught up, it waits for more
        stop.set()
        await asyncio.wait_for(reader, 10)
        assert seen == [1]

    async def test_closing_the_backplane_ends_its_tails(self, bp: Backplane) -> None:
        await bp.events.append(started("r1", "t0"))
        seen: list[int] = []

        async def follow() -> None:
            async for seq, _, _ in bp.events.tail():
                seen.append(seq)

        reader = asyncio.create_task(follow())
        await eventually(lambda: _true(seen == [1]), timeout=10, what="the tail to catch up")
        await bp.close()
        await asyncio.wait_for(reader, 10)
        assert seen == [1]

    async def test_follow_run_ends_after_the_terminal_event(self, bp: Backplane) -> None:
        log = bp.events
        await log.append(scheduled("r1"))

        async def follow() -> list[tuple[int, AnyEvent]]:
            return [item async for item in log.follow_run("r1")]

        reader = asyncio.create_task(follow())
        await log.append(started("r2", "other-run"))
        await log.append(succeeded("r1", "t1"))
        await log.append(run_succeeded("r1"))
        events = await asyncio.wait_for(reader, 10)
        assert [s for s, _ in events] == [1, 3, 4]
        assert [type(e).__name__ for _, e in events] == [
            "RunScheduled",
            "TaskSucceeded",
            "RunSucceeded",
        ]
        # A finished run: its stored events, then the end.
        again = await asyncio.wait_for(_collect(log.follow_run("r1", from_seq=2)), 10)
        assert [s for s, _ in again] == [3, 4]

    async def test_undecodable_messages_are_skipped(self, bp: Backplane, harness: Harness) -> None:
        log = bp.events
        await log.append(scheduled("r1"))
        await harness.inject_event_bytes("r1", b"not an event")
        await harness.inject_event_bytes("r1", b'{"type": "NoSuchEvent", "run_id": "r1"}')
        await log.append(started("r1", "t1"))
        await log.append(run_succeeded("r1"))
        assert [s for s, _ in await log.history("r1")] == [1, 4, 5]
        assert [s for s, _, _ in await take(log.tail(from_seq=2), 1)] == [4]
        followed = await asyncio.wait_for(_collect(log.follow_run("r1")), 10)
        assert [s for s, _ in followed] == [1, 4, 5]

    async def test_tail_yields_undecodable_messages_as_none_only_when_asked(
        self, bp: Backplane, harness: Harness
    ) -> None:
        log = bp.events
        await log.append(scheduled("r1"))
        await harness.inject_event_bytes("r1", b"\xff not an event")
        await harness.inject_event_bytes("r2", b'{"type": "NoSuchEvent", "run_id": "r2"}')
        await log.append(started("r1", "t1"))
        await harness.inject_event_bytes("r1", b"not an event either")  # the log's last
        whole = await take(log.tail(skipped=True), 5)
        assert [(s, e, p) for s, e, p in whole] == [
            (1, scheduled("r1"), 4),
            (2, None, 3),
            (3, None, 2),
            (4, started("r1", "t1"), 1),
            (5, None, 0),
        ]
        assert [(s, e) for s, e, _ in await take(log.tail(run_id="r1", skipped=True), 4)] == [
            (1, scheduled("r1")),
            (2, None),
            (4, started("r1", "t1")),
            (5, None),
        ]
        # Without `skipped`, the same log gives the events only, and the last one is caught up
        # to as far as a reader can tell (pending counts what is stored after it).
        plain = await take(log.tail(), 2)
        assert [(s, e) for s, e, _ in plain] == [(1, scheduled("r1")), (4, started("r1", "t1"))]
        stop = asyncio.Event()
        more = asyncio.create_task(take(log.tail(from_seq=5, stop=stop), 1))
        await asyncio.sleep(0.2)
        assert not more.done()  # the undecodable message at 5 is not given
        seq = await log.append(started("r1", "t2"))
        assert [(s, e) for s, e, _ in await asyncio.wait_for(more, 10)] == [
            (seq, started("r1", "t2"))
        ]


async def _collect(source: AsyncIterator[T]) -> list[T]:
    return [item async for item in source]


async def _true(condition: bool) -> bool | None:
    return True if condition else None


class TestEventLogOnMemory(OnMemory, EventLogContract):
    pass


class TestEventLogOnNats(OnNats, EventLogContract):
    pass
