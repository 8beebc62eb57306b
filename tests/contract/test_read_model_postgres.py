"""The read-model contract on Postgres, and what only the Postgres store has: migrations, an outage
mid-batch, two projectors at once, and lists served by indexes.

Talks to a real server: `$CYCLONETIX_TEST_POSTGRES` (default the machine's, postgresql://postgres@
127.0.0.1:5432, trust auth). A fresh database is created for the test run and dropped after it;
each test gets a fresh schema in it. Without a server the tests skip (fail under
CYCLONETIX_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest

from core.errors import Unavailable
from core.events import (
    AnyEvent,
    GraphExtended,
    RunFailed,
    RunScheduled,
    RunSucceeded,
    TaskStarted,
    TaskSucceeded,
)
from core.run import RunStatus
from projections.memory import MemoryReadModel
from projections.postgres import PostgresReadModel, list_runs_query, migrate, migrations
from projections.protocol import Entry, ReadModel
from projections.views import RunFilter
from tests.conftest import requires_service
from tests.contract.test_read_model import (
    T0,
    Opened,
    ReadModelContract,
    Stores,
    all_runs,
    evaluation,
    everything,
    node,
    queued,
    scheduled,
    splits,
    stream,
)

SERVER_ENV = "CYCLONETIX_TEST_POSTGRES"


async def _admin(server: str, sql: str) -> None:
    con = await asyncpg.connect(f"{server}/postgres", timeout=5)
    try:
        await con.execute(sql)
    finally:
        await con.close()


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[str]:
    """A database private to this test run (created here, dropped at the end)."""
    server = os.environ.get(SERVER_ENV, "postgresql://postgres@127.0.0.1:5432").rstrip("/")
    name = f"cyclonetix_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_admin(server, f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError) as exc:
        requires_service("postgres", f"{server}: {exc}")
    try:
        yield f"{server}/{name}"
    finally:
        asyncio.run(_admin(server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def admin(postgres_db: str) -> AsyncIterator[Any]:
    """A connection of the test's own, beside the store's (to lock, kill, explain)."""
    con = await asyncpg.connect(postgres_db)
    try:
        yield con
    finally:
        await con.close()


class TestReadModelOnPostgres(ReadModelContract):
    @pytest.fixture
    async def stores(self, postgres_db: str, schema: str) -> AsyncIterator[Stores]:
        async with Opened(lambda: PostgresReadModel(postgres_db, schema=schema)) as stores:
            yield stores


@pytest.fixture
async def store(postgres_db: str, schema: str) -> AsyncIterator[PostgresReadModel]:
    opened = PostgresReadModel.from_url(postgres_db, schema=schema)
    try:
        yield opened
    finally:
        await opened.close()


async def replayed_in_memory(entries: list[Entry]) -> dict[str, Any]:
    fresh = MemoryReadModel()
    await fresh.apply_batch(entries)
    return await everything(fresh)


# -- migrations ---------------------------------------------------------------------------------


async def test_concurrent_starters_apply_each_migration_once(
    postgres_db: str, schema: str, admin: Any
) -> None:
    starters = [PostgresReadModel(postgres_db, schema=schema) for _ in range(6)]
    try:
        await asyncio.gather(*(s.start() for s in starters))
        versions = [v for v, _, _ in migrations()]
        found = await admin.fetch(f"SELECT version FROM {schema}.schema_migrations")
        assert sorted(r[0] for r in found) == versions
        assert await migrate(admin, schema) == []  # applied twice: nothing to do
        assert await starters[-1].checkpoint() == 0
    finally:
        for s in starters:
            await s.close()


async def test_version_3_moves_each_graph_into_graph_parts_unchanged(
    store: PostgresReadModel, schema: str, admin: Any
) -> None:
    """A store written at version 2 (a node per task_runs row) reads the same after upgrading."""
    ev = msgspec.structs.replace(node("ev"), evaluation_point=True)
    d, decide = node("d", "ev"), evaluation("d")
    await store.apply_batch(
        [
            (1, scheduled("r1", ev, node("b", "ev"), node("c", "ev"))),
            (2, queued("r1", "ev")),
            (3, TaskSucceeded(run_id="r1", ts=T0, task_id="ev", attempt=1, evaluation=decide)),
            (4, GraphExtended(run_id="r1", ts=T0, task_id="ev", attempt=1, nodes=(d,))),
            *((5 + i, queued("r1", task)) for i, task in enumerate("bcd")),  # (v2: every row)
        ]
    )
    before = await store.get_run("r1")
    assert before is not None and [n.id for n in before.graph] == ["ev", "b", "c", "d"]
    # Back to version 2's shape, as an older release left it.
    await admin.execute(
        f"SET search_path = {schema};"
        " ALTER TABLE task_runs ADD COLUMN node jsonb, ADD COLUMN position int;"
        " UPDATE task_runs t SET node = n.node, position = n.position FROM ("
        "  SELECT g.run_id, node, (row_number() OVER (ORDER BY g.seq, i)) - 1 AS position"
        "  FROM graph_parts g JOIN events e USING (run_id, seq), jsonb_array_elements("
        "  coalesce(e.body::jsonb -> 'graph', e.body::jsonb -> 'nodes')) WITH ORDINALITY"
        "  AS x(node, i)) AS n WHERE n.run_id = t.run_id AND n.node ->> 'id' = t.task_id;"
        " ALTER TABLE task_runs ALTER COLUMN node SET NOT NULL,"
        "  ALTER COLUMN position SET NOT NULL;"
        " DROP TABLE graph_parts;"
        " ALTER TABLE events DROP CONSTRAINT events_pkey; ALTER TABLE events ADD PRIMARY KEY (seq);"
        " CREATE INDEX events_by_run ON events (run_id, seq);"
        " DELETE FROM schema_migrations WHERE version = 3; RESET search_path"
    )
    assert await migrate(admin, schema) == [3]
    await store.close()  # (a fresh cache and pool)
    after = await store.get_run("r1")
    assert after == before


# -- an outage --------------------------------------------------------------------------------


async def project(store: ReadModel, batches: list[list[Entry]], failures: list[str]) -> None:
    """A projector: each batch from the store's checkpoint on, retried (with a short backoff)
    while the store is unavailable."""
    for batch in batches:
        while True:
            try:
                after = await store.checkpoint()
                await store.apply_batch([e for e in batch if e[0] > after])
                break
            except Unavailable as exc:
                failures.append(str(exc))
                await asyncio.sleep(0.02)


async def backends(admin: Any, waiting: bool) -> list[int]:
    """The store's server processes (only those waiting on a lock, when `waiting`)."""
    found = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'cyclonetix-read-model'"
        + (" AND wait_event_type = 'Lock'" if waiting else "")
    )
    return [r[0] for r in found]


async def test_a_connection_killed_mid_batch_loses_nothing_and_the_store_catches_up(
    store: PostgresReadModel, admin: Any, postgres_db: str, schema: str
) -> None:
    entries = stream(41, 6)
    batches = splits(random.Random(41), entries)
    half = len(batches) // 2
    failures: list[str] = []
    await project(store, batches[:half], failures)  # the cache of open runs is warm
    # The next batch folds its events, then blocks writing the runs table; its connection is
    # killed there, mid-transaction, as an outage would.
    async with admin.transaction():
        await admin.execute(f"LOCK TABLE {schema}.runs IN SHARE MODE")
        projector = asyncio.create_task(project(store, batches[half:], failures))
        async with asyncio.timeout(10):
            while not (stuck := await backends(admin, waiting=True)):
                await asyncio.sleep(0.01)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", stuck[0])
    async with asyncio.timeout(10):
        while not failures:
            await asyncio.sleep(0.01)
    # ...and its idle connections are killed too, while it catches up.
    for pid in await backends(admin, waiting=False):
        await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    await asyncio.wait_for(projector, 30)

    assert len(failures[0].splitlines()) == 1
    assert failures[0].startswith("Postgres read model at ") and " unavailable (" in failures[0]
    assert "administrator command" in failures[0]  # what closed the connection, not that it is
    assert await store.checkpoint() == entries[-1][0]
    expected = await replayed_in_memory(entries)
    assert await everything(store) == expected
    replay = PostgresReadModel(postgres_db, schema=f"{schema}_replay")
    try:
        await replay.apply_batch(entries)
        assert await everything(replay) == expected
    finally:
        await replay.close()


async def test_an_unreachable_server_makes_every_method_unavailable_in_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = PostgresReadModel.from_url(f"postgresql://postgres@127.0.0.1:{port}/cyclonetix")
    try:
        calls = [
            down.checkpoint(),
            down.apply_batch([(1, RunFailed(run_id="r", ts=T0))]),
            down.list_runs(),
            down.count_runs(),
            down.get_run("r"),
            down.task_attempts("r", "a"),
            down.recent_events("r"),
            down.wait_for(1, timeout=0.1),
            down.reset(),
        ]
        for call in calls:
            with pytest.raises(Unavailable) as caught:
                await call
            message = str(caught.value)
            assert f"127.0.0.1:{port}/cyclonetix unavailable" in message
            assert "\n" not in message
    finally:
        await down.close()
    with pytest.raises(ValueError, match="Postgres URL"):
        PostgresReadModel.from_url("redis://127.0.0.1:6379")


# -- two projectors at once ---------------------------------------------------------------------


async def test_two_projectors_on_one_store_apply_each_entry_once(
    postgres_db: str, schema: str
) -> None:
    entries = stream(5, 5)
    one = PostgresReadModel(postgres_db, schema=schema)
    two = PostgresReadModel(postgres_db, schema=schema)
    try:
        await asyncio.gather(
            project(one, splits(random.Random(1), entries), []),
            project(two, splits(random.Random(2), entries), []),
        )
        assert await everything(one) == await replayed_in_memory(entries)
    finally:
        await one.close()
        await two.close()


async def test_a_live_batch_is_one_statement_and_a_store_moved_under_it_is_written_again(
    postgres_db: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live batches of runs the store already caches go as one guarded statement (no
    transaction: the projector's lag is one round trip). When another writer moved the store
    meanwhile, the guard writes nothing and the batch is written again in a transaction."""
    tasks = [f"t{i}" for i in range(6)]
    entries: list[Entry] = [(1, scheduled("r1", *(node(t) for t in tasks)))]
    entries += [(seq, queued("r1", t)) for seq, t in enumerate(tasks, 2)]
    one = PostgresReadModel(postgres_db, schema=schema)
    two = PostgresReadModel(postgres_db, schema=schema)
    transactions: list[int] = []
    real = PostgresReadModel._write

    async def counted(self: PostgresReadModel, con: Any, batch: Any) -> int:
        transactions.append(len(batch))
        return await real(self, con, batch)

    monkeypatch.setattr(PostgresReadModel, "_write", counted)
    try:
        await one.apply_batch(entries[:1])  # a new run: a transaction reads the store
        await one.apply_batch(entries[1:2])  # then one statement each
        await one.apply_batch(entries[2:4])
        assert len(transactions) == 1
        await two.apply_batch(entries[:5])  # another writer moves the store
        assert len(transactions) == 2
        assert await one.apply_batch(entries) == 7  # the guard fails: a transaction
        assert len(transactions) == 3
        assert await everything(one) == await replayed_in_memory(entries)
    finally:
        await one.close()
        await two.close()


# -- readers ------------------------------------------------------------------------------------


async def test_a_reader_elsewhere_waits_for_what_a_projector_applies(
    postgres_db: str, schema: str
) -> None:
    writer = PostgresReadModel(postgres_db, schema=schema)
    reader = PostgresReadModel(postgres_db, schema=schema)  # as in another process: no wake-up
    try:
        waiting = asyncio.ensure_future(reader.wait_for(2, timeout=5))
        await writer.apply_batch([(1, scheduled("r1", node("a")))])
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await writer.apply_batch([(2, queued("r1", "a"))])
        assert await waiting
        assert not await reader.wait_for(3, timeout=0.1)
    finally:
        await writer.close()
        await reader.close()


async def test_a_task_an_evaluation_point_adds_selects_its_run(store: PostgresReadModel) -> None:
    ev = msgspec.structs.replace(node("ev"), evaluation_point=True)
    added = node("x", "ev")
    events: list[AnyEvent] = [
        scheduled("r1", ev),
        scheduled("r2", node("a")),
        queued("r1", "ev"),
        TaskSucceeded(run_id="r1", ts=T0, task_id="ev", attempt=1, evaluation=evaluation("x")),
        GraphExtended(run_id="r1", ts=T0, task_id="ev", attempt=1, nodes=(added,)),
        queued("r1", "x"),
    ]
    await store.apply_batch(list(enumerate(events, start=1))[:4])
    await store.apply_batch(list(enumerate(events, start=1))[4:])
    assert [r.run_id for r in (await store.list_runs(RunFilter(task="x"))).items] == ["r1"]
    assert [r.run_id for r in (await store.list_runs(RunFilter(task="ev"))).items] == ["r1"]
    assert (await store.count_runs(RunFilter(task="x")))[RunStatus.RUNNING] == 1
    detail = await store.get_run("r1")
    assert detail is not None and [n.id for n in detail.graph] == ["ev", "x"]


# -- lists at a few thousand runs ---------------------------------------------------------------


def many_runs(n: int) -> list[Entry]:
    """`n` runs over two targets and two triggers: scheduled, running, failed or succeeded."""
    rnd = random.Random(n)
    events: list[AnyEvent] = []
    for i in range(n):
        run_id = f"r{i:05}"
        events.append(
            RunScheduled(
                run_id=run_id,
                ts=T0 + dt.timedelta(seconds=i),
                kind="dag",
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
    store: PostgresReadModel, admin: Any, schema: str
) -> None:
    entries = many_runs(3000)
    memory = MemoryReadModel()
    for i in range(0, len(entries), 1000):
        await store.apply_batch(entries[i : i + 1000])
        await memory.apply_batch(entries[i : i + 1000])
    await admin.execute(f"ANALYZE {schema}.runs")
    filters = [
        RunFilter(status=RunStatus.FAILED),
        RunFilter(status=RunStatus.RUNNING, target="etl"),
        RunFilter(target="report"),
        RunFilter(trigger="cron", task="c"),
        RunFilter(since=T0 + dt.timedelta(seconds=500), until=T0 + dt.timedelta(seconds=900)),
    ]
    for where in filters:
        found = await all_runs(store, where, page=50)
        assert found == await all_runs(memory, where, page=50), where
        assert len(found) > 50, where
        assert await store.count_runs(where) == await memory.count_runs(where), where
    assert await store.count_runs() == await memory.count_runs()
    # A page of failed runs is read off an index in list order (the planner picks which, by the
    # statistics): no sort, no scan of the table, whichever page.
    second = (await store.list_runs(RunFilter(status=RunStatus.FAILED), 50)).next_cursor
    for cursor in (None, second):
        sql, args = list_runs_query(RunFilter(status=RunStatus.FAILED), 50, cursor)
        await admin.execute(f"SET search_path = {schema}")
        [plan] = json.loads(await admin.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
        nodes = list(plan_nodes(plan["Plan"]))
        assert any(n["Node Type"] == "Index Scan" for n in nodes), nodes
        assert not any(n["Node Type"] in ("Sort", "Seq Scan", "Bitmap Heap Scan") for n in nodes)


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


async def test_the_postgres_read_model_benchmark_runs_on_a_tiny_size(postgres_db: str) -> None:
    from bench import read_model_postgres_bench

    server = postgres_db.rsplit("/", 1)[0]  # (the bench makes a database of its own there)
    figures = await read_model_postgres_bench.run(server, 5, 10, 100, 1000)
    assert figures["replay_events"] == 55 and figures["list_runs"] == 1000
    assert isinstance(figures["list_failed_50"], dict) and figures["list_failed_50"]["p50_ms"] > 0
