"""The read-model contract on Redis, and what only the Redis store has: its URL, an outage
mid-stream, two projectors at once, and lists served by indexes.

Talks to a real server: `$CYCLONETIX_TEST_REDIS` (default the machine's, redis://127.0.0.1:6379/0).
Each test gets a key prefix of its own (`cxtest:<random>:`) and deletes its keys after, so the
tests share the server with anything else on it. Without a server the tests skip (fail under
CYCLONETIX_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import redis.asyncio as aioredis
from redis import exceptions as rexc

from core.errors import Unavailable
from core.events import (
    AnyEvent,
    EvaluationResult,
    GraphExtended,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskStarted,
    TaskSucceeded,
)
from core.run import RunStatus, TaskStatus
from core.snapshots import TaskNode
from projections import rows
from projections.memory import MemoryReadModel
from projections.protocol import Entry, ReadModel
from projections.redis import RedisReadModel
from projections.views import RunFilter
from tests.conftest import requires_service
from tests.contract.test_read_model import (
    T0,
    Opened,
    ReadModelContract,
    Stores,
    all_runs,
    everything,
    node,
    queued,
    splits,
    stream,
)

SERVER_ENV = "CYCLONETIX_TEST_REDIS"


@pytest.fixture
async def redis_url() -> str:
    url = os.environ.get(SERVER_ENV, "redis://127.0.0.1:6379/0")
    probe = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await probe.ping()
    except (OSError, rexc.RedisError) as exc:
        requires_service("redis", f"{url}: {exc}")
    finally:
        await probe.aclose()
    return url


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A connection of the test's own, beside the store's (to inspect and kill)."""
    con = aioredis.from_url(redis_url)
    try:
        yield con
    finally:
        await con.aclose()


@pytest.fixture
async def prefix(admin: aioredis.Redis) -> AsyncIterator[str]:
    """A fresh installation per test; its keys are deleted after it."""
    name = f"cxtest:{uuid.uuid4().hex}:"
    try:
        yield name
    finally:
        keys = [k async for k in admin.scan_iter(match=f"{name}*", count=1000)]
        for i in range(0, len(keys), 1000):
            await admin.unlink(*keys[i : i + 1000])


class TestReadModelOnRedis(ReadModelContract):
    @pytest.fixture
    async def stores(self, redis_url: str, prefix: str) -> AsyncIterator[Stores]:
        async with Opened(lambda: RedisReadModel(redis_url, prefix=prefix)) as stores:
            yield stores


@pytest.fixture
def client_name() -> str:
    """The name the store's connections give the server (so a test can find and kill them)."""
    return f"cxtest-{uuid.uuid4().hex}"


@pytest.fixture
async def store(redis_url: str, prefix: str, client_name: str) -> AsyncIterator[RedisReadModel]:
    opened = RedisReadModel(redis_url, prefix=prefix, client_name=client_name)
    try:
        yield opened
    finally:
        await opened.close()


async def replayed_in_memory(entries: list[Entry]) -> dict[str, Any]:
    fresh = MemoryReadModel()
    await fresh.apply_batch(entries)
    return await everything(fresh)


async def project(
    store: ReadModel, batches: list[list[Entry]], failures: list[str], pace: float = 0.0
) -> None:
    """A projector: each batch from the store's checkpoint on, retried (with a short backoff)
    while the store is unavailable; `pace` seconds between batches (as they arrive live)."""
    for batch in batches:
        await asyncio.sleep(pace)
        while True:
            try:
                after = await store.checkpoint()
                await store.apply_batch([e for e in batch if e[0] > after])
                break
            except Unavailable as exc:
                failures.append(str(exc))
                await asyncio.sleep(0.02)


# -- the URL --------------------------------------------------------------------------------------


async def test_from_url_takes_the_prefix_from_the_query(redis_url: str, prefix: str) -> None:
    store = RedisReadModel.from_url(f"{redis_url}?prefix={prefix}&socket_timeout=3")
    try:
        assert store.prefix == prefix
        await store.apply_batch([(1, RunFailed(run_id="r", ts=T0))])
        assert await store.checkpoint() == 1
    finally:
        await store.close()
    assert RedisReadModel.from_url("redis://127.0.0.1:6379/2").prefix == "cx:rm:"
    with pytest.raises(ValueError, match="Redis URL"):
        RedisReadModel.from_url("postgresql://postgres@127.0.0.1:5432/x")


# -- an outage ------------------------------------------------------------------------------------


class Proxy:
    """A TCP relay between the store and Redis that the test can cut: every connection through
    it closed at once (an outage mid-call) and new ones refused until it is restored."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.port = 0
        self.down = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (pump(reader, up_writer), pump(up_reader, writer)):
            t = asyncio.create_task(task)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    def cut(self) -> None:
        """Close every connection through the relay now and refuse new ones."""
        self.down = True
        self.cuts += 1
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.down = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[Proxy]:
    relay = Proxy(redis_url)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


async def test_an_outage_mid_stream_raises_unavailable_and_the_store_catches_up(
    proxy: Proxy, prefix: str, redis_url: str
) -> None:
    entries = stream(41, 30)  # (long enough for several outages mid-stream)
    batches = splits(random.Random(41), entries)
    db = urlsplit(redis_url).path.strip("/") or "0"
    store = RedisReadModel(f"redis://127.0.0.1:{proxy.port}/{db}", prefix=prefix, timeout=1)
    failures: list[str] = []
    try:
        await project(store, batches[: len(batches) // 3], failures)  # the cache is warm
        assert not failures
        # The projector runs on while the link to Redis is cut again and again, mid-call
        # (a script sent but its reply lost, a read half done), each outage lasting a while.
        rest = batches[len(batches) // 3 :]
        projector = asyncio.create_task(project(store, rest, failures, pace=0.002))
        rnd = random.Random(41)
        while not projector.done():
            await asyncio.sleep(rnd.uniform(0.0, 0.02))
            proxy.cut()
            await asyncio.sleep(rnd.uniform(0.0, 0.05))
            proxy.restore()
        await projector
        assert proxy.cuts >= 3 and len(failures) >= 2, (proxy.cuts, failures)
    finally:
        await store.close()
    assert all(len(f.splitlines()) == 1 for f in failures)
    assert f"Redis read model at 127.0.0.1:{proxy.port}/{db} unavailable" in failures[0]
    # Nothing lost, nothing applied twice: the same rows as a fresh replay, read back through
    # another connection with a cold cache.
    check = RedisReadModel(redis_url, prefix=prefix)
    try:
        assert await check.checkpoint() == entries[-1][0]
        assert await everything(check) == await replayed_in_memory(entries)
    finally:
        await check.close()


async def test_connections_killed_mid_stream_are_replaced_and_nothing_is_lost(
    store: RedisReadModel, admin: aioredis.Redis, client_name: str
) -> None:
    entries = stream(43, 30)  # (32 batches: long enough for the killer to strike often)
    batches = splits(random.Random(43), entries)
    failures: list[str] = []
    killed = 0
    done = asyncio.Event()

    async def killer() -> None:
        """CLIENT KILL every connection of the store, again and again, while it projects."""
        nonlocal killed
        rnd = random.Random(43)
        while not done.is_set():
            await asyncio.sleep(rnd.uniform(0.0, 0.004))
            for c in await admin.client_list():
                if c["name"] == client_name:
                    with contextlib.suppress(rexc.ResponseError):  # (already gone)
                        await admin.client_kill_filter(_id=c["id"])
                        killed += 1

    killing = asyncio.create_task(killer())
    try:
        await project(store, batches, failures, pace=0.002)
    finally:
        done.set()
        await killing
    assert killed >= 5
    assert all(len(f.splitlines()) == 1 for f in failures)
    assert await everything(store) == await replayed_in_memory(entries)


async def test_an_unreachable_server_makes_every_method_unavailable_in_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = RedisReadModel.from_url(f"redis://127.0.0.1:{port}/3?prefix=cx:nowhere:")
    calls: list[Callable[[], Any]] = [
        down.checkpoint,
        lambda: down.apply_batch([(1, RunFailed(run_id="r", ts=T0))]),
        down.list_runs,
        lambda: down.list_runs(RunFilter(status=RunStatus.FAILED, target="x")),
        down.count_runs,
        lambda: down.count_runs(RunFilter(since=T0)),
        lambda: down.get_run("r"),
        lambda: down.task_attempts("r", "a"),
        lambda: down.recent_events("r"),
        lambda: down.wait_for(1, timeout=1),
        down.reset,
    ]
    try:
        for call in calls:
            with pytest.raises(Unavailable) as caught:
                await call()
            message = str(caught.value)
            assert f"Redis read model at 127.0.0.1:{port}/3 unavailable" in message
            assert "\n" not in message
    finally:
        await down.close()


# -- two projectors at once -----------------------------------------------------------------------


async def test_two_projectors_on_one_store_apply_each_entry_once(
    redis_url: str, prefix: str
) -> None:
    entries = stream(5, 5)
    one = RedisReadModel(redis_url, prefix=prefix)
    two = RedisReadModel(redis_url, prefix=prefix)
    try:
        await asyncio.gather(
            project(one, splits(random.Random(1), entries), []),
            project(two, splits(random.Random(2), entries), []),
        )
        assert await everything(one) == await replayed_in_memory(entries)
    finally:
        await one.close()
        await two.close()


async def test_a_projector_notices_what_another_wrote_before_and_while_it_folds(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = stream(9, 4)
    third = len(entries) // 3
    one = RedisReadModel(redis_url, prefix=prefix)
    two = RedisReadModel(redis_url, prefix=prefix)
    try:
        # Taking turns: `one`'s cache of open runs is stale after `two` wrote; it must fold the
        # rest from what is stored, not from its cache.
        await one.apply_batch(entries[:third])
        await two.apply_batch(entries[third : 2 * third])
        await one.apply_batch(entries[2 * third :])
        assert await everything(one) == await replayed_in_memory(entries)
        # At once: `two` writes everything between `one` reading the checkpoint and writing
        # its batch. One's write must not land (its fold started from an older checkpoint).
        await one.reset()
        await one.apply_batch(entries[:third])
        load = one._load

        async def meanwhile(run_ids: set[str]) -> Any:
            monkeypatch.setattr(one, "_load", load)
            await two.apply_batch(entries)
            return await load(run_ids)

        monkeypatch.setattr(one, "_load", meanwhile)
        assert await one.apply_batch(entries[third : 2 * third]) == entries[-1][0]
        assert await one.checkpoint() == entries[-1][0]
        assert await everything(one) == await replayed_in_memory(entries)
    finally:
        await one.close()
        await two.close()


async def test_reset_deletes_only_this_installations_keys(
    store: RedisReadModel, admin: aioredis.Redis, prefix: str, redis_url: str
) -> None:
    neighbour = RedisReadModel(redis_url, prefix=f"{prefix}b:")  # (a prefix under ours)
    try:
        await store.apply_batch(stream(3, 2))
        await neighbour.apply_batch(stream(4, 2))
        before = await everything(neighbour)
        await store.reset()
        assert [k async for k in admin.scan_iter(match=f"{prefix}[^b]*")] == []
        assert await everything(neighbour) == before
    finally:
        await neighbour.close()


# -- lists at a few thousand runs -----------------------------------------------------------------


def many_runs(n: int) -> list[Entry]:
    """`n` runs over two targets and two triggers: scheduled, running, failed or succeeded."""
    rnd = random.Random(n)
    events: list[AnyEvent] = []
    for i in range(n):
        run_id = f"r{i:05}"
        events.append(
            RunScheduled(
                run_id=run_id,
                ts=T0 + dt.timedelta(seconds=rnd.randrange(n)),  # not in log order
                kind=rnd.choice(("dag", "outcome")),
                target=rnd.choice(("etl", "report")),
                name=run_id,
                graph=(node("a"), node(rnd.choice(("b", "c")), "a")),
                trigger=rnd.choice(("cli", "cron")),
            )
        )
        fate = rnd.random()
        if fate < 0.7:
            events.append(queued(run_id, "a"))
            events.append(TaskStarted(run_id=run_id, ts=T0, task_id="a", attempt=1, agent_id="x"))
        if fate < 0.2:
            events.append(RunFailed(run_id=run_id, ts=T0))
        elif fate < 0.5:
            events.append(RunSucceeded(run_id=run_id, ts=T0))
    return list(enumerate(events, start=1))


async def test_lists_of_thousands_of_runs_page_by_index_and_agree_with_memory(
    store: RedisReadModel, admin: aioredis.Redis, prefix: str, redis_url: str
) -> None:
    entries = many_runs(3000)
    times = sorted({e.ts for _, e in entries if isinstance(e, RunScheduled)})
    memory = MemoryReadModel()
    for i in range(0, len(entries), 1000):
        await store.apply_batch(entries[i : i + 1000])
        await memory.apply_batch(entries[i : i + 1000])
    filters = [
        RunFilter(),
        RunFilter(status=RunStatus.FAILED),
        RunFilter(status=RunStatus.RUNNING, target="etl"),
        RunFilter(target="report", kind="outcome"),
        RunFilter(trigger="cron", task="c"),
        RunFilter(since=T0 + dt.timedelta(seconds=500), until=T0 + dt.timedelta(seconds=900)),
        RunFilter(status=RunStatus.SUCCEEDED, since=T0 + dt.timedelta(seconds=2000)),
        RunFilter(task="b", until=T0 + dt.timedelta(seconds=300)),
        # Wide windows whose ends are some runs' own times (since inclusive, until exclusive),
        # under an index smaller than the window.
        RunFilter(kind="outcome", until=times[len(times) * 5 // 6]),
        RunFilter(target="etl", trigger="cron", since=times[len(times) // 10]),
        RunFilter(status=RunStatus.RUNNING, task="c", since=times[7], until=times[-7]),
    ]
    for where in filters:
        found = await all_runs(store, where, page=50)
        assert found == await all_runs(memory, where, page=50), where
        assert len(found) > 50, where
        assert await store.count_runs(where) == await memory.count_runs(where), where
    assert await store.count_runs() == await memory.count_runs()
    # The status index holds each run once, under its current status, and the counts are
    # its sizes.
    counts = await store.count_runs()
    for status, n in counts.items():
        assert await admin.zcard(f"{prefix}by:status:{status}") == n
    assert sum(counts.values()) == 3000 == await admin.zcard(f"{prefix}all")
    # A page of failed runs reads the failed index from the cursor on: one range of 51 ids
    # and one fetch of their rows, whichever page.
    second = (await store.list_runs(RunFilter(status=RunStatus.FAILED), 50)).next_cursor
    for cursor in (None, second):

        async def failed_page(c: str | None = cursor) -> object:
            return await store.list_runs(RunFilter(status=RunStatus.FAILED), 50, c)

        reads = await commands_sent(redis_url, prefix, failed_page)
        assert len(reads) == 2, reads
        assert reads[0].startswith(f"zrevrangebyscore {prefix}by:status:failed "), reads
        assert " limit 0 51 " in reads[0] and reads[1].startswith("hmget")


async def test_counts_by_every_field_follow_runs_and_growing_graphs(
    store: RedisReadModel,
) -> None:
    """Counts for one field come from counters kept by the write script; after every batch
    they agree with memory's, for every value seen (graphs grown by evaluation points too)."""
    grown = 0
    for seed in (6, 8, 11, 35, 37, 2):  # (all but the last grow a graph with a new task)
        await store.reset()
        memory = MemoryReadModel()
        entries = stream(seed, 4)
        filters = {RunFilter(), RunFilter(target="nothing"), RunFilter(task="nothing")}
        for _, event in entries:
            if isinstance(event, RunScheduled):
                filters |= {RunFilter(kind=event.kind), RunFilter(target=event.target)}
                filters |= {RunFilter(trigger=event.trigger)}
                filters |= {RunFilter(task=n.task_id) for n in event.graph}
            if isinstance(event, GraphExtended):
                filters |= {RunFilter(task=n.task_id) for n in event.nodes}
                grown += 1
        for batch in splits(random.Random(seed), entries):
            await store.apply_batch(batch)
            await memory.apply_batch(batch)
            for where in filters:
                assert await store.count_runs(where) == await memory.count_runs(where), where
    assert grown >= 5


async def commands_sent(
    redis_url: str, prefix: str, action: Callable[[], Awaitable[object]]
) -> list[str]:
    """The commands on this installation's keys that clients sent during `action` (seen
    through MONITOR, which changes nothing on the server; those a script ran are left out)."""
    watcher = aioredis.from_url(redis_url)
    end = f"{prefix}end-of-watch"
    try:
        async with watcher.monitor() as monitor:
            await action()
            await watcher.exists(end)  # (a second connection of the pool)
            seen: list[str] = []
            async with asyncio.timeout(10):
                while end not in (command := (sent := await monitor.next_command())["command"]):
                    if prefix in command and sent.get("client_type") != "lua":
                        seen.append(command.lower())
            return seen
    finally:
        await watcher.aclose()


async def test_the_redis_read_model_benchmark_runs_on_a_tiny_size(redis_url: str) -> None:
    from bench import read_model_redis_bench

    figures = await read_model_redis_bench.run(redis_url, 5, 10, 100, 1000)
    assert figures["replay_events"] == 55 and figures["list_runs"] == 1000
    assert isinstance(figures["list_failed_50"], dict) and figures["list_failed_50"]["p50_ms"] > 0


async def test_a_store_written_before_pending_rows_were_made_when_read_reads_the_same(
    store: RedisReadModel, admin: aioredis.Redis, prefix: str
) -> None:
    """Before, every graph value was the node alone, and pending tasks and queued attempts had
    rows of their own; such a store (rewritten here into that layout) reads as it did."""
    entries = stream(6, 4)
    await store.apply_batch(entries)
    before = await everything(store)
    keys: list[Any] = await admin.keys(f"{prefix}g:*")
    for key in keys:
        run_id = key.decode().removeprefix(f"{prefix}g:")
        detail = await store.get_run(run_id)
        assert detail is not None
        graph: dict[Any, Any] = await admin.hgetall(key)
        for position, value in graph.items():
            await admin.hset(key, position, value.partition(b" ")[2])  # the node alone
        for task in detail.tasks:
            if task.status == TaskStatus.PENDING:
                await admin.hset(f"{prefix}t:{run_id}", task.task_id, msgspec.json.encode(task))
            elif (attempt := rows.queued_attempt(task)) is not None:
                field = f"{task.task_id} {attempt.attempt}"
                await admin.hset(f"{prefix}a:{run_id}", field, msgspec.json.encode(attempt))
    assert await everything(store) == before


async def test_a_graph_of_thousands_of_nodes_is_written_in_parts_and_reads_as_in_memory(
    store: RedisReadModel,
) -> None:
    """The script writes a graph's nodes a thousand at a time and indexes each definition once
    per run (here 4,500 nodes of 2,250 definitions, then an evaluation point's 1,200 more)."""
    ev = TaskNode(id="ev", task_id="ev", command="true", evaluation_point=True)
    graph = (ev, *(node(f"n{i}") for i in range(4500)))
    graph = tuple(msgspec.structs.replace(n, task_id=f"d{i // 2}") for i, n in enumerate(graph))
    extended = tuple(node(f"x{i}", "ev") for i in range(1200))
    result = EvaluationResult(next_tasks=tuple(n.id for n in extended))
    events: list[AnyEvent] = [
        RunScheduled(run_id="big", ts=T0, kind="dag", target="t", name="big", graph=graph),
        queued("big", "ev"),
        TaskSucceeded(run_id="big", ts=T0, task_id="ev", attempt=1, evaluation=result),
        GraphExtended(run_id="big", ts=T0, task_id="ev", attempt=1, nodes=extended),
    ]
    entries: list[Entry] = list(enumerate(events, start=1))
    await store.apply_batch(entries)
    assert await everything(store) == await replayed_in_memory(entries)
    for definition in ("d0", "d2250", "x0", "x1199"):
        assert await store.count_runs(RunFilter(task=definition)) == {
            **dict.fromkeys(RunStatus, 0),
            RunStatus.RUNNING: 1,
        }


async def test_a_live_batch_is_one_script_call_and_a_store_moved_under_it_is_read_again(
    store: RedisReadModel, redis_url: str, prefix: str
) -> None:
    """After its first write a store knows its checkpoint: the next batch is the script call
    alone (the script checks the checkpoint). Another writer in between is noticed, the
    checkpoint read and the batch folded again from it."""
    entries = stream(8, 3)
    await store.apply_batch(entries[:10])
    sent = await commands_sent(redis_url, prefix, lambda: store.apply_batch(entries[10:12]))
    assert [c.split()[0] for c in sent] == ["evalsha"], sent
    other = RedisReadModel(redis_url, prefix=prefix)
    try:
        await other.apply_batch(entries[:20])  # (the same events: they read the same)
    finally:
        await other.close()
    assert await store.apply_batch(entries[12:]) == entries[-1][0]
    assert await everything(store) == await replayed_in_memory(entries)


async def test_a_slow_answer_that_the_sequence_is_applied_is_a_yes(
    store: RedisReadModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeout bounds the waiting, not a read (a loaded machine answered late: False)."""
    read = store.checkpoint

    async def slow() -> int:
        await asyncio.sleep(0.1)
        return await read()

    monkeypatch.setattr(store, "checkpoint", slow)
    assert await store.wait_for(0, timeout=0.01)
    assert not await store.wait_for(1, timeout=0.01)
