"""The SSE feeds: a run's changes once the read model applied them, every run's rows, resuming
from a sequence, keep-alives, and clients removed when they go."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

import pytest

from core.events import QueuedTask, RunCancelRequested, TasksQueued
from projections.memory import MemoryReadModel
from tests.contract.test_read_model import T0, node, scheduled
from tests.fakes.backplane import MemoryBackplane, MemoryServer
from tests.waiting import eventually
from tests.web.api.helpers import Frame, ended, frame_where, start
from web import live
from web.live import LiveFeed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx

    from web.context import UiContext

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_a_run_stream_sends_each_change_after_it_is_applied(
    client: httpx.AsyncClient, published: object
) -> None:
    run_id = await start(client, task="d")  # no orchestrator: it waits until cancelled
    async with client.stream("GET", f"/api/v1/runs/{run_id}/stream") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        cancel = await client.post(f"/api/v1/runs/{run_id}/cancel", json={"reason": "<b>é</b>"})
        # (The feed tails the log on its own: under load it may reach the RunScheduled only
        # after the stream opened, and send that change first.)
        frame = await frame_where(
            r, lambda f: f.event == "change" and json.loads(f.data)["seq"] >= cancel.json()["seq"]
        )
    change = json.loads(frame.data)
    assert frame.id == str(change["seq"]) == str(cancel.json()["seq"])
    assert change["type"] == "RunCancelRequested"
    assert change["run"]["run_id"] == run_id
    assert change["run"]["cancel_requested"] is True  # the read model had applied it
    assert change["run"]["cancel_reason"] == "<b>é</b>"
    assert change["tasks"] == []


async def test_a_run_is_followed_to_its_end_resuming_from_its_start(
    client: httpx.AsyncClient, system: None
) -> None:
    run_id = await start(client, task="d")
    async with client.stream(
        "GET", f"/api/v1/runs/{run_id}/stream", headers={"Last-Event-ID": "0"}
    ) as r:
        seen: list[dict[str, object]] = []

        def at_end(frame: Frame) -> bool:
            seen.append(json.loads(frame.data))
            return seen[-1]["type"] == "RunSucceeded"

        await frame_where(r, at_end)
    assert seen[0]["type"] == "RunScheduled"  # from the read model: what came before
    seqs = [int(str(c["seq"])) for c in seen]
    assert seqs == sorted(set(seqs))  # each event once, in order
    started = [c for c in seen if c["type"] == "TaskStarted"]
    assert {t["task_id"] for c in started for t in c["tasks"]} == {"a", "b", "c", "d"}  # type: ignore[attr-defined]
    # b and c, ready together once a succeeded, are queued by one TasksQueued: its change
    # (live, or from the backlog) carries both rows
    queued = [c for c in seen if c["type"] == "TasksQueued"]
    assert [sorted(t["task_id"] for t in c["tasks"]) for c in queued] == [["a"], ["b", "c"], ["d"]]  # type: ignore[attr-defined]
    await ended(client, run_id)


async def test_the_runs_stream_sends_every_changed_run(
    client: httpx.AsyncClient, published: object
) -> None:
    async with client.stream("GET", "/api/v1/stream") as r:
        run_id = await start(client, dag="diamond")
        frame = await frame_where(r, lambda f: f.event == "run")
    row = json.loads(frame.data)
    assert (row["run_id"], row["kind"], row["status"]) == (run_id, "dag", "scheduled")
    assert frame.id == str(row["last_seq"])


async def test_keep_alives_and_clients_removed_when_they_go(
    client: httpx.AsyncClient, ui: UiContext, published: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "KEEPALIVE_S", 0.05)
    feed = ui.extras["live"]
    assert isinstance(feed, LiveFeed)
    run_id = await start(client, task="a")
    async with client.stream("GET", f"/api/v1/runs/{run_id}/stream") as r:
        frame = await frame_where(r, lambda f: bool(f.comments))
        assert frame.comments == ("keep-alive",)
        assert feed.clients == 1
    await start(client, task="a")  # a change: the stream of the closed client ends

    async def gone() -> bool | None:
        return True if feed.clients == 0 else None

    await eventually(gone, timeout=10, what="the closed client to be removed")


async def test_the_stream_of_an_unknown_run_is_404(
    client: httpx.AsyncClient, published: object
) -> None:
    r = await client.get("/api/v1/runs/nope/stream")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "no run 'nope'"


async def test_a_change_is_sent_only_once_the_read_model_applied_it_however_long_that_takes() -> (
    None
):
    """A read model behind by many `apply_wait`s: the client gets nothing meanwhile (a change
    sent early would carry older rows under its id, for good), then the change with its rows;
    a stop while waiting ends the feed."""
    async with feed_alone() as (bp, model, feed):
        sub = feed.subscribe("r1")
        event = scheduled("r1", node("a"))
        seq = await bp.events.append(event)

        async def waited_twice() -> bool | None:
            return True if feed.behind >= 2 else None

        await eventually(waited_twice, timeout=10, what="the feed to wait for the read model")
        assert sub.queue.empty()
        await model.apply_batch([(seq, event)])
        sent, change = await asyncio.wait_for(sub.queue.get(), 10)
        assert sent == seq and isinstance(change, live.RunChange)
        assert change.run.run_id == "r1" and change.run.last_seq == seq
        await bp.events.append(RunCancelRequested(run_id="r1", ts=T0, reason="", by="x"))
        behind = feed.behind
        await eventually(lambda: _more(feed, behind), timeout=10, what="the feed to wait again")


async def _more(feed: LiveFeed, than: int) -> bool | None:
    return True if feed.behind > than else None


async def test_a_new_client_reads_its_backlog_once_the_read_model_holds_what_the_feed_passed() -> (
    None
):
    """A burst nobody listened to is passed over without waiting for the read model; a client
    that subscribes next reads its backlog only once the read model holds it (else the run's
    first event fell between the two: a benchmark counted 61 changes of 62)."""
    async with feed_alone() as (bp, model, feed):
        event = scheduled("r1", node("a"))
        seq = await bp.events.append(event)

        async def passed() -> bool | None:
            return True if feed.passed >= seq else None

        await eventually(passed, timeout=10, what="the feed to pass the event")
        feed.subscribe("r1")
        caught = asyncio.ensure_future(feed.caught_up(10))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(caught), 0.2)
        await model.apply_batch([(seq, event)])
        await caught
        assert [s for s, _ in await live._backlog(model, "r1", 0)] == [seq]


async def test_a_tasks_queued_change_carries_the_rows_of_all_its_tasks_live_and_resumed() -> None:
    """One TasksQueued names several tasks (the attempts of one decision): its change carries
    the row of each (and of no other task), as sent live from the event and as read back from
    the read model's event row (which has no task id of its own) by a resuming client."""
    async with feed_alone() as (bp, model, feed):
        sub = feed.subscribe("r1")
        entries = []
        for event in (
            scheduled("r1", node("a"), node("b"), node("c"), node("d", "a")),
            TasksQueued(
                run_id="r1",
                ts=T0,
                tasks=tuple(QueuedTask(task_id=t, attempt=1, queue="default") for t in "abc"),
            ),
        ):
            entries.append((await bp.events.append(event), event))
        await model.apply_batch(entries)
        sent = [await asyncio.wait_for(sub.queue.get(), 10) for _ in entries]
        queued_seq = entries[1][0]
        assert [seq for seq, _ in sent] == [seq for seq, _ in entries]
        change = sent[1][1]
        assert isinstance(change, live.RunChange) and change.type == "TasksQueued"
        assert [(t.task_id, t.status, t.attempt, t.last_seq) for t in change.tasks] == [
            (t, "queued", 1, queued_seq) for t in "abc"
        ]
        [row] = await model.recent_events("r1", after_seq=entries[0][0])
        assert (row.type, row.task_id) == ("TasksQueued", None)  # the tasks are in its body
        backlog = await live._backlog(model, "r1", 0)
        assert backlog == sent  # the same changes, rows included, from the read model
        assert await live._backlog(model, "r1", entries[0][0]) == sent[1:]


@contextlib.asynccontextmanager
async def feed_alone() -> AsyncIterator[tuple[MemoryBackplane, MemoryReadModel, LiveFeed]]:
    """A feed over an in-memory log and a read model nothing applies to but the test; it is
    stopped at the end (also while it waits for the read model)."""
    async with MemoryServer().connect("ui") as bp:
        model = MemoryReadModel()
        feed = LiveFeed(bp.events, model, apply_wait=0.02)
        stop = asyncio.Event()
        running = asyncio.ensure_future(feed.run(stop))
        await feed.ready.wait()
        try:
            yield bp, model, feed
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)
