"""The work queue's contract: deduplicated dispatch, one shared consumer per queue, settling,
redelivery, deliveries running out, poison messages and depths."""

from __future__ import annotations

import asyncio
import contextlib

from services.ports import Backplane, LostWork, WorkConsumer, WorkItem
from tests.contract.harness import (
    Contract,
    Harness,
    OnMemory,
    OnNats,
    aclose,
    dispatch,
    fetch_n,
)


async def _nothing_within(consumer: WorkConsumer, seconds: float) -> None:
    """Assert that no item comes within `seconds` (settles any that does, to fail clearly)."""
    items = await consumer.fetch(1, timeout=seconds)
    for item in items:
        await item.ack()
    assert items == [], f"unexpected delivery: {[(i.dispatch, i.delivery) for i in items]}"


class WorkQueueContract(Contract):
    async def test_dispatch_is_deduplicated(self, bp: Backplane) -> None:
        work = bp.work
        d = dispatch("t1")
        seq = await work.dispatch(d)
        assert await work.dispatch(d) == seq
        assert await work.dispatch_nowait(d) == seq
        assert await work.dispatch(dispatch("t1", attempt=2)) == seq + 1  # another attempt
        assert await work.depths() == {"default": 2}

    async def test_dispatch_is_deduplicated_after_it_was_acked(
        self, bp: Backplane, harness: Harness
    ) -> None:
        # A restarted orchestrator re-sends dispatches it cannot know were delivered.
        work = bp.work
        d = dispatch("t1")
        seq = await work.dispatch(d)
        consumer = await work.consumer("default")
        [item] = await fetch_n(consumer, 1)
        await item.ack()
        assert await work.dispatch(d) == seq
        await _nothing_within(consumer, harness.quiet)

    async def test_fetch_gives_dispatches_in_order_and_ack_removes_them(
        self, bp: Backplane, harness: Harness
    ) -> None:
        work = bp.work
        sent = [dispatch(f"t{i}") for i in range(3)]
        for d in sent:
            await work.dispatch(d)
        consumer = await work.consumer("default", ack_wait=harness.ack_wait)
        [first] = await consumer.fetch(1, timeout=5)
        assert (first.dispatch, first.delivery, first.pending) == (sent[0], 1, 2)
        rest = await fetch_n(consumer, 2)
        assert [(i.dispatch, i.delivery) for i in rest] == [(sent[1], 1), (sent[2], 1)]
        assert rest[-1].pending == 0
        for item in [first, *rest]:
            await item.ack()
        await _nothing_within(consumer, harness.quiet)  # acked: not redelivered after ack_wait
        await consumer.close()

    async def test_fetch_waits_for_the_first_dispatch(self, bp: Backplane) -> None:
        consumer = await bp.work.consumer("default")
        assert await consumer.fetch(1, timeout=0.1) == []
        waiting = asyncio.create_task(consumer.fetch(1, timeout=10))
        await bp.work.dispatch(dispatch("t1"))
        [item] = await waiting
        assert item.dispatch == dispatch("t1")
        await item.ack()

    async def test_queues_are_separate(self, bp: Backplane, harness: Harness) -> None:
        await bp.work.dispatch(dispatch("g1", queue="gpu"))
        default = await bp.work.consumer("default")
        gpu = await bp.work.consumer("gpu")
        await _nothing_within(default, harness.quiet)
        [item] = await fetch_n(gpu, 1)
        assert item.dispatch == dispatch("g1", queue="gpu")
        await item.ack()

    async def test_nak_redelivers_at_once_with_the_next_delivery_count(self, bp: Backplane) -> None:
        await bp.work.dispatch(dispatch("t1"))
        await bp.work.dispatch(dispatch("t2"))
        consumer = await bp.work.consumer("default", ack_wait=30)
        [item] = await fetch_n(consumer, 1)
        await item.nak()
        # Well before ack_wait. (Not necessarily ahead of t2: a nak is not a round trip, so
        # the server may see the next pull first.)
        items = await fetch_n(consumer, 2, timeout=5)
        assert sorted((i.dispatch.task_id, i.delivery) for i in items) == [("t1", 2), ("t2", 1)]
        for i in items:
            await i.ack()

    async def test_an_unacked_item_is_redelivered_after_ack_wait(
        self, bp: Backplane, harness: Harness
    ) -> None:
        await bp.work.dispatch(dispatch("t1"))
        consumer = await bp.work.consumer("default", ack_wait=harness.ack_wait)
        [item] = await fetch_n(consumer, 1)
        assert item.delivery == 1  # ...and its agent dies without settling it
        [again] = await fetch_n(consumer, 1)
        assert (again.dispatch, again.delivery) == (dispatch("t1"), 2)
        await again.ack()

    async def test_in_progress_keeps_an_item_from_redelivery(
        self, bp: Backplane, harness: Harness
    ) -> None:
        await bp.work.dispatch(dispatch("t1"))
        ack_wait = 2 * harness.ack_wait
        consumer = await bp.work.consumer("default", ack_wait=ack_wait)
        [item] = await fetch_n(consumer, 1)
        other = await bp.work.consumer("default", ack_wait=ack_wait)
        for _ in range(6):  # twice ack_wait in all
            await item.in_progress()
            await _nothing_within(other, ack_wait / 3)
        await item.ack()
        await _nothing_within(other, harness.quiet + ack_wait)

    async def test_term_removes_an_item_for_good(self, bp: Backplane, harness: Harness) -> None:
        await bp.work.dispatch(dispatch("t1"))
        consumer = await bp.work.consumer("default", ack_wait=harness.ack_wait)
        [item] = await fetch_n(consumer, 1)
        await item.term()
        await _nothing_within(consumer, harness.quiet)
        assert await bp.work.depths() == {"default": 0}

    async def test_an_item_whose_deliveries_ran_out_is_lost_work(
        self, bp: Backplane, harness: Harness
    ) -> None:
        work = bp.work
        d = dispatch("t1")
        await work.dispatch(d)
        await work.dispatch(dispatch("t2"))
        consumer = await work.consumer("default", ack_wait=harness.ack_wait, max_deliver=2)
        first = await fetch_n(consumer, 2)
        assert sorted((i.dispatch.task_id, i.delivery) for i in first) == [("t1", 1), ("t2", 1)]
        await next(i for i in first if i.dispatch.task_id == "t2").ack()
        [second] = await fetch_n(consumer, 1)
        assert (second.dispatch, second.delivery) == (d, 2)  # ...and never settled

        pulled: list[WorkItem] = []

        async def keep_pulling() -> None:  # deliveries run out when the queue is next pulled
            while True:
                pulled.extend(await consumer.fetch(1, timeout=1))

        puller = asyncio.create_task(keep_pulling())
        lost = work.lost()
        try:
            got = await asyncio.wait_for(anext(lost), 15)
        finally:
            puller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await puller
        try:
            assert got == LostWork(dispatch=d, deliveries=2)
            # Asking for the next one means this one was handled (it leaves the queue).
            following: asyncio.Future[LostWork] = asyncio.ensure_future(anext(lost))
            await _nothing_within(
                consumer, harness.quiet
            )  # a lost dispatch is never delivered again
            assert not following.done()  # and nothing else was lost
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        finally:
            await aclose(lost)
        assert pulled == []
        assert await work.depths() == {"default": 0}

    async def test_a_single_allowed_delivery_runs_out_at_ack_wait(
        self, bp: Backplane, harness: Harness
    ) -> None:
        await bp.work.dispatch(dispatch("t1"))
        consumer = await bp.work.consumer("default", ack_wait=harness.ack_wait, max_deliver=1)
        await fetch_n(consumer, 1)  # ...and nobody settles it, nor pulls the queue again
        lost = bp.work.lost()
        try:
            got = await asyncio.wait_for(anext(lost), 10)
        finally:
            await aclose(lost)
        assert got == LostWork(dispatch=dispatch("t1"), deliveries=1)

    async def test_deliveries_that_ran_out_are_noticed_when_the_queue_is_pulled(
        self, bp: Backplane, harness: Harness
    ) -> None:
        # With max_deliver > 1, JetStream notices exhausted deliveries only when it next tries
        # to deliver: while no agent of the queue pulls, the lost work is not reported.
        await bp.work.dispatch(dispatch("t1"))
        consumer = await bp.work.consumer("default", ack_wait=harness.ack_wait, max_deliver=2)
        await fetch_n(consumer, 1)
        [second] = await fetch_n(consumer, 1)
        assert second.delivery == 2
        lost = bp.work.lost()
        waiting: asyncio.Future[LostWork] = asyncio.ensure_future(anext(lost))
        try:
            done, _ = await asyncio.wait({waiting}, timeout=harness.ack_wait + harness.quiet)
            assert not done, "lost work was reported before anyone pulled the queue"
            await _nothing_within(consumer, harness.quiet)  # this pull notices it
            got = await asyncio.wait_for(waiting, 10)
        finally:
            waiting.cancel()
            await aclose(lost)
        assert got == LostWork(dispatch=dispatch("t1"), deliveries=2)

    async def test_consumers_of_a_queue_share_its_work(
        self, bp: Backplane, harness: Harness
    ) -> None:
        other = await harness.connect("agent-2")
        sent = [dispatch(f"t{i}") for i in range(10)]
        for d in sent:
            await bp.work.dispatch(d)
        first = await bp.work.consumer("default", ack_wait=30)
        second = await other.work.consumer("default", ack_wait=30)
        got: dict[str, list[str]] = {"first": [], "second": []}
        items: list[WorkItem] = []

        async def pull(name: str, consumer: WorkConsumer) -> None:
            while len(items) < 10:
                batch = await consumer.fetch(3, timeout=harness.ack_wait)
                got[name] += [i.dispatch.task_id for i in batch]
                items.extend(batch)

        await asyncio.wait_for(asyncio.gather(pull("first", first), pull("second", second)), 15)
        # Nothing was settled, yet no dispatch went to both: each is held by one consumer.
        assert len(got["first"]) + len(got["second"]) == 10
        assert sorted(got["first"] + got["second"]) == sorted(d.task_id for d in sent)
        assert {i.delivery for i in items} == {1}
        for item in items:
            await item.ack()
        await _nothing_within(second, harness.quiet)

    async def test_an_undecodable_dispatch_is_terminated_not_returned(
        self, bp: Backplane, harness: Harness
    ) -> None:
        await harness.inject_dispatch_bytes("default", b"not a dispatch")
        await bp.work.dispatch(dispatch("t1"))
        consumer = await bp.work.consumer("default", ack_wait=harness.ack_wait)
        [item] = await fetch_n(consumer, 1)
        assert item.dispatch == dispatch("t1")
        await item.ack()
        await _nothing_within(consumer, harness.quiet)  # the bad one was not just left unacked
        assert await bp.work.depths() == {"default": 0}

    async def test_depths_count_what_waits_for_delivery(self, bp: Backplane) -> None:
        work = bp.work
        assert await work.depths() == {}
        await work.dispatch(dispatch("t1"))
        await work.dispatch(dispatch("t2"))
        await work.dispatch(dispatch("g1", queue="gpu"))
        assert await work.depths() == {"default": 2, "gpu": 1}
        consumer = await work.consumer("default")
        [item] = await fetch_n(consumer, 1)
        assert await work.depths() == {"default": 1, "gpu": 1}  # in flight: not waiting
        await item.ack()
        [item] = await fetch_n(consumer, 1)
        await item.ack()
        assert await work.depths() == {"default": 0, "gpu": 1}


class TestWorkQueueOnMemory(OnMemory, WorkQueueContract):
    pass


class TestWorkQueueOnNats(OnNats, WorkQueueContract):
    pass
