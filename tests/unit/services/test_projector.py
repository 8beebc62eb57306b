"""The projector role and the replay tool on the in-memory backplane and the memory store.

The oracle everywhere is a fresh store given every message of the log in one batch (each
decoded by `projections.protocol.decode_entry`, so unreadable ones are skipped the store's way),
compared field by field through the read-model protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest
import structlog

from core.errors import Invalid, Unavailable
from core.events import RunScheduled, encode
from core.run import RunStatus
from projections.memory import MemoryReadModel, MemoryTables
from projections.protocol import Entry, decode_entry
from projections.stores import open_read_model
from services.cli.replay import differences, verify
from services.ports import EventLog
from services.projector import Progress, Projector, replay
from tests.contract.test_read_model import everything, node, queued, scheduled, stream
from tests.fakes import MemoryServer
from tests.rolekit import (
    DIAMOND,
    Connect,
    running_orchestrator,
    schedule,
    stand_in_agent,
    until_end,
    until_stopped,
)
from tests.waiting import eventually

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def store_log(server: MemoryServer, entries: Sequence[Entry]) -> int:
    """Put the events of `entries` in the log as a writer would (None: bytes that are no event);
    the sequence of the last one."""
    last = 0
    for _, event in entries:
        if event is None:
            last = server.inject_event_bytes("junk", b"\x00 not an event")
        else:
            last = server.inject_event_bytes(event.run_id, encode(event))
    return last


def ending(run_id: str) -> RunScheduled:
    """A readable last event for a log to end in (one that ends in an unreadable message is
    tested on its own)."""
    return RunScheduled(
        run_id=run_id, ts=T0, kind="outcome", target="t", name="t", graph=(), trigger="cli"
    )


async def fresh_replay(server: MemoryServer) -> MemoryReadModel:
    store = MemoryReadModel()
    await store.apply_batch([decode_entry(m.seq, m.data) for m in server.events.messages])
    return store


async def assert_same_as_fresh_replay(server: MemoryServer, store: MemoryReadModel) -> None:
    assert await everything(store) == await everything(await fresh_replay(server))


@contextlib.asynccontextmanager
async def projecting(
    server: MemoryServer, store: MemoryReadModel | Any, **options: Any
) -> AsyncIterator[Projector]:
    """A projector on its own connection, as in its own process; stopped on exit."""
    conn = server.connect("projector")
    projector = Projector(conn.events, store, retry_first=0.01, retry_cap=0.05, **options)
    async with until_stopped(projector.run, conn):
        yield projector


async def applied_up_to(store: MemoryReadModel | Any, seq: int) -> None:
    async def probe() -> bool | None:
        return True if await store.checkpoint() >= seq else None

    await eventually(probe, timeout=10, what=f"the store to apply up to {seq}")


async def test_applies_the_log_then_follows_it_live(server: MemoryServer) -> None:
    entries = stream(seed=1, runs=6)
    half = len(entries) // 2
    store_log(server, entries[:half])
    store = MemoryReadModel()
    async with projecting(server, store, batch=7) as projector:
        await asyncio.wait_for(projector.live.wait(), 10)
        assert await store.checkpoint() == server.events.last_seq()
        last = store_log(server, [*entries[half:], (0, ending("last"))])
        await applied_up_to(store, last)
        assert projector.lag.applied == last
        assert projector.lag.events == 0
    await assert_same_as_fresh_replay(server, store)
    assert projector.batches > 1


async def test_follows_a_run_the_orchestrator_drives(
    server: MemoryServer, connect: Connect
) -> None:
    store = MemoryReadModel()
    async with server.connect("test") as bp, projecting(server, store):
        async with running_orchestrator(connect), stand_in_agent(bp):
            run_id = await schedule(bp, DIAMOND, "d")
            await until_end(bp, run_id)
        await applied_up_to(store, server.events.last_seq())
        detail = await store.get_run(run_id)
        assert detail is not None
        assert detail.run.status == RunStatus.SUCCEEDED
        assert [t.task_id for t in detail.tasks] == ["a", "b", "c", "d"]
    await assert_same_as_fresh_replay(server, store)


class Spy:
    """An EventLog whose `tail` records where it was asked to start."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.starts: list[int] = []

    def tail(self, *, from_seq: int = 1, **options: Any) -> Any:
        self.starts.append(from_seq)
        return self.events.tail(from_seq=from_seq, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.events, name)


async def test_a_restarted_projector_resumes_after_its_checkpoint(server: MemoryServer) -> None:
    entries = stream(seed=2, runs=8)
    third = len(entries) // 3
    store_log(server, entries[:third])
    tables = MemoryTables()  # what survives the projector: the store
    # The first projector is killed (cancelled, no stop) while events still arrive.
    async with server.connect("first") as conn:
        first = Projector(conn.events, MemoryReadModel(tables), batch=3)
        task = asyncio.ensure_future(first.run(asyncio.Event()))
        await applied_up_to(MemoryReadModel(tables), 1)
        store_log(server, entries[third : 2 * third])
        await applied_up_to(MemoryReadModel(tables), server.events.last_seq() // 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    checkpoint = tables.checkpoint
    last = store_log(server, [*entries[2 * third :], (0, ending("last"))])
    assert 0 < checkpoint < last
    # The second one, over the same rows with a cold cache, starts right after the checkpoint.
    store = MemoryReadModel(tables)
    async with server.connect("second") as conn:
        spy = Spy(conn.events)
        second = Projector(spy, store)
        stop = asyncio.Event()
        task = asyncio.ensure_future(second.run(stop))
        await applied_up_to(store, last)
        stop.set()
        await asyncio.wait_for(task, 10)
    assert spy.starts == [checkpoint + 1]
    await assert_same_as_fresh_replay(server, store)


class FlakyStore:
    """A memory store whose next `fail` calls (apply_batch and checkpoint) raise Unavailable,
    as a store whose server went away would."""

    def __init__(self, fail: int = 0) -> None:
        self.inner = MemoryReadModel()
        self.fail = fail
        self.failed = 0

    def _maybe_fail(self) -> None:
        if self.fail > 0:
            self.fail -= 1
            self.failed += 1
            raise Unavailable("read model unavailable (injected)")

    async def apply_batch(self, entries: Sequence[Entry]) -> int:
        self._maybe_fail()
        return await self.inner.apply_batch(entries)

    async def checkpoint(self) -> int:
        self._maybe_fail()
        return await self.inner.checkpoint()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_store_outage_is_retried_and_nothing_is_lost(server: MemoryServer) -> None:
    entries = stream(seed=3, runs=6)
    half = len(entries) // 2
    store_log(server, entries[:half])
    store = FlakyStore(fail=2)  # down when the projector starts
    async with projecting(server, store, batch=5) as projector:
        await asyncio.wait_for(projector.live.wait(), 10)
        store.fail = 4  # and down again while the rest arrives live
        with structlog.testing.capture_logs() as logs:
            last = store_log(server, [*entries[half:], (0, ending("last"))])
            await applied_up_to(store.inner, last)
    assert store.failed == 6
    assert projector.failures == 6
    warnings = [e for e in logs if e["event"] == "projector.store_unavailable"]
    assert [e["failures"] for e in warnings] == [1, 2, 3, 4]
    assert any(e["event"] == "projector.store_back" for e in logs)
    await assert_same_as_fresh_replay(server, store.inner)


async def test_stops_while_the_store_is_away(server: MemoryServer) -> None:
    store_log(server, stream(seed=4, runs=2))
    store = FlakyStore(fail=10**6)
    async with projecting(server, store) as projector:
        await eventually(lambda: _true_if(store.failed >= 2), timeout=5)
    # (the context manager's exit waited for run() to return after stop)
    assert projector.applied == 0


async def _true_if(condition: bool) -> bool | None:
    return True if condition else None


def as_a_newer_writer(run_id: str) -> bytes:
    """An event type this version does not know."""
    return json.dumps(
        {"type": "TaskPaused", "run_id": run_id, "ts": T0.isoformat(), "task_id": "t0"}
    ).encode()


async def test_an_unreadable_event_is_skipped_with_its_sequence_logged(
    server: MemoryServer,
) -> None:
    entries = stream(seed=5, runs=3)
    store_log(server, entries[:10])
    newer = server.inject_event_bytes(entries[0][1].run_id, as_a_newer_writer("x"))  # type: ignore[union-attr]
    garbage = server.inject_event_bytes("junk", b"{not json")
    last = store_log(server, [*entries[10:], (0, ending("last"))])
    store = MemoryReadModel()
    with structlog.testing.capture_logs() as logs:
        async with projecting(server, store):
            await applied_up_to(store, last)
    skipped = [e["seq"] for e in logs if "undecodable" in e["event"]]
    unreadable = [m.seq for m in server.events.messages if decode_entry(m.seq, m.data)[1] is None]
    assert {newer, garbage} <= set(unreadable)
    assert skipped == unreadable
    await assert_same_as_fresh_replay(server, store)


async def test_an_unreadable_message_at_the_end_of_the_log_moves_the_checkpoint_past_it(
    server: MemoryServer,
) -> None:
    store_log(server, stream(seed=8, runs=3))
    last = server.inject_event_bytes("junk", b"{not json")  # nothing readable after it
    tables = MemoryTables()
    async with projecting(server, MemoryReadModel(tables)) as first:
        await asyncio.wait_for(first.live.wait(), 10)  # caught up with the log's last message
        await applied_up_to(MemoryReadModel(tables), last)
    assert tables.checkpoint == last
    assert first.lag.events == 0
    # A restart starts after it: the message is not read (nor logged) again.
    with structlog.testing.capture_logs() as logs:
        async with server.connect("second") as conn:
            spy = Spy(conn.events)
            second = Projector(spy, MemoryReadModel(tables))
            stop = asyncio.Event()
            task = asyncio.ensure_future(second.run(stop))
            await asyncio.wait_for(second.live.wait(), 10)
            await asyncio.sleep(0.05)  # (time to read the message, were it read again)
            stop.set()
            await asyncio.wait_for(task, 10)
    assert spy.starts == [last + 1]
    assert not [e for e in logs if "undecodable" in e["event"]]
    assert second.batches == 0
    await assert_same_as_fresh_replay(server, MemoryReadModel(tables))


# -- replay -------------------------------------------------------------------------------------


async def test_replay_rebuilds_the_store_up_to_a_sequence(server: MemoryServer) -> None:
    last = store_log(server, [*stream(seed=6, runs=5), (0, ending("last"))])
    reports: list[Progress] = []
    async with server.connect("replay") as conn:
        whole = MemoryReadModel()
        done = await replay(conn.events, whole, batch=4, progress=reports.append, every=0)
        assert (done.checkpoint, done.complete) == (last, True)
        await assert_same_as_fresh_replay(server, whole)
        assert reports[-1].done == reports[-1].total == last
        assert [r.done for r in reports] == sorted(r.done for r in reports)

        upto = last // 2
        part = MemoryReadModel()
        await replay(conn.events, part, upto=upto, batch=4)
        oracle = MemoryReadModel()
        await oracle.apply_batch(
            [decode_entry(m.seq, m.data) for m in server.events.messages[:upto]]
        )
        assert (await everything(part))["runs"] == (await everything(oracle))["runs"]
        assert await differences(oracle, part, upto) == ([], 0)


async def test_replay_of_a_log_that_ends_in_unreadable_messages_completes_at_once(
    server: MemoryServer,
) -> None:
    store_log(server, stream(seed=9, runs=3))
    server.inject_event_bytes("junk", b"{not json")
    last = server.inject_event_bytes("r-new", as_a_newer_writer("r-new"))
    async with server.connect("replay") as conn:
        store = MemoryReadModel()
        done = await asyncio.wait_for(replay(conn.events, store, batch=4), 2)
    assert (done.checkpoint, done.complete) == (last, True)
    unreadable = [m.seq for m in server.events.messages if decode_entry(m.seq, m.data)[1] is None]
    assert done.applied == last - len(unreadable)  # unreadable messages are no events applied
    await assert_same_as_fresh_replay(server, store)


async def test_replay_of_one_run(server: MemoryServer) -> None:
    entries = stream(seed=7, runs=4)
    store_log(server, entries)
    run_id = next(e.run_id for _, e in entries if isinstance(e, RunScheduled))
    async with server.connect("replay") as conn:
        store = MemoryReadModel()
        await replay(conn.events, store, run_id=run_id)
    page = await store.list_runs()
    assert [r.run_id for r in page.items] == [run_id]
    expected = await (await fresh_replay(server)).get_run(run_id)
    assert expected is not None
    assert await store.get_run(run_id) == msgspec.structs.replace(
        expected, as_of_seq=await store.checkpoint()
    )


async def test_verify_finds_nothing_in_a_projected_store_and_names_a_changed_field(
    server: MemoryServer, connect: Connect
) -> None:
    live = open_read_model("memory://verify-test")
    async with server.connect("test") as bp:
        async with projecting(server, live), running_orchestrator(connect), stand_in_agent(bp):
            run_id = await schedule(bp, DIAMOND, "d")
            await until_end(bp, run_id)
            await applied_up_to(live, server.events.last_seq())
        assert await verify(bp.events, live) == ([], 0)

        # A row changed by hand, in the live store only.
        tables = open_read_model("memory://verify-test").tables  # type: ignore[attr-defined]
        row = tables.runs[run_id]
        tables.runs[run_id] = msgspec.structs.replace(row, status=RunStatus.FAILED, name="x")
        task = tables.tasks[run_id]["b"]
        tables.tasks[run_id]["b"] = msgspec.structs.replace(task, exit_code=3)
        found, left_out = await verify(bp.events, live)
    assert left_out == 0
    assert found == [
        f"run {run_id} name: live x replayed {row.name}",
        f"run {run_id} status: live failed replayed succeeded",
        f"run {run_id} tasks[b].exit_code: live 3 replayed 0",
    ]


async def test_verify_leaves_out_runs_changed_after_the_checkpoint(server: MemoryServer) -> None:
    store_log(server, [(0, scheduled("r1", node("t")))])
    live = MemoryReadModel()
    async with server.connect("replay") as conn:
        await replay(conn.events, live)
        store_log(server, [(0, queued("r1", "t"))])
        await replay(conn.events, live)  # the live store moved on: its checkpoint too
        replayed = MemoryReadModel()
        await replay(conn.events, replayed, upto=1)
    assert await differences(live, replayed, upto=1) == ([], 1)


# -- opening a store by URL ----------------------------------------------------------------------


def test_memory_urls_name_a_store_of_this_process() -> None:
    private = open_read_model("memory://")
    assert isinstance(private, MemoryReadModel)
    assert private.tables is not open_read_model("memory://").tables  # type: ignore[attr-defined]
    named = open_read_model("memory://shared-by-name")
    assert isinstance(named, MemoryReadModel)
    assert named.tables is open_read_model("memory://shared-by-name/").tables  # type: ignore[attr-defined]


def test_a_url_of_no_store_is_one_clear_line() -> None:
    with pytest.raises(Invalid, match=r"^not a read-model URL: mysql://h/db \(use memory://"):
        open_read_model("mysql://h/db")


@pytest.mark.parametrize(
    ("url", "module"), [("redis://h:6379/0", "redis"), ("postgresql://h/d", "postgres")]
)
def test_a_store_whose_adapter_is_missing_is_one_clear_line(
    url: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, f"projections.{module}", None)
    with pytest.raises(Invalid, match=r"read model is not available in this version$"):
        open_read_model(url)


def test_a_postgres_url_takes_the_schema_from_its_query_and_hides_its_password() -> None:
    store = open_read_model("postgresql://u:pw@127.0.0.1:5432/cx?schema=s1")
    assert (store.dsn, store.schema) == ("postgresql://u:pw@127.0.0.1:5432/cx", "s1")  # type: ignore[attr-defined]
    with pytest.raises(Invalid) as bad:
        open_read_model("postgresql://u:pw@h/db?schema=no-such-name")
    assert "pw" not in str(bad.value)
    assert str(bad.value).startswith("read model postgresql://u:***@h/db?schema=no-such-name: ")
