"""Read-model queries over NATS request-reply (services/nats/queries.py) against a real
nats-server: what a client gets is exactly what the store holding the rows answers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import pytest

from core.errors import Invalid, Unavailable
from core.run import RunStatus
from projections.memory import MemoryReadModel
from projections.views import RunFilter
from services.nats import NatsBackplane
from services.nats.queries import NatsReadModelQueries, serve_read_model
from tests.contract.test_read_model import stream
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def serving(backplane: NatsBackplane, store: MemoryReadModel) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.ensure_future(serve_read_model(backplane.connection, store, stop))
    try:
        yield
    finally:
        stop.set()
        await task


@pytest.fixture
async def store() -> MemoryReadModel:
    store = MemoryReadModel()
    await store.apply_batch(stream(7, 12))
    return store


async def test_a_client_reads_what_the_store_holds(
    backplane: NatsBackplane, store: MemoryReadModel
) -> None:
    client = NatsReadModelQueries(backplane.connection)
    async with serving(backplane, store):
        checkpoint = await eventually(client.checkpoint, what="the server to answer")
        assert checkpoint == await store.checkpoint() > 0
        since = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        for where in (RunFilter(), RunFilter(status=RunStatus.SUCCEEDED), RunFilter(since=since)):
            assert await client.count_runs(where) == await store.count_runs(where)
            cursor: str | None = None
            pages = 0
            while True:
                page = await client.list_runs(where, 3, cursor)
                assert page == await store.list_runs(where, 3, cursor)
                pages += 1
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert pages >= 1
        everyone = await store.list_runs(RunFilter(), 100)
        assert len(everyone.items) > 3
        for row in everyone.items:
            assert await client.get_run(row.run_id) == await store.get_run(row.run_id)
        assert await client.get_run("no-such-run") is None


async def test_a_bad_query_comes_back_as_the_stores_error(
    backplane: NatsBackplane, store: MemoryReadModel
) -> None:
    client = NatsReadModelQueries(backplane.connection)
    async with serving(backplane, store):
        await eventually(client.checkpoint, what="the server to answer")
        with pytest.raises(Invalid, match="not a cursor of this list: 'x'"):
            await client.list_runs(RunFilter(), 10, "x")
        with pytest.raises(Invalid, match="limit must be positive"):
            await client.list_runs(RunFilter(), 0)


async def test_nobody_serving_is_unavailable_at_once(backplane: NatsBackplane) -> None:
    client = NatsReadModelQueries(backplane.connection, timeout=10)
    async with asyncio.timeout(5):  # no responders: no waiting for the timeout
        with pytest.raises(Unavailable, match="nothing serves the in-memory read model"):
            await client.list_runs()
