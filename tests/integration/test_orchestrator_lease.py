"""One leader at a time across a NATS outage longer than the lease TTL, on a real nats-server:
the leader steps down while it cannot renew, neither orchestrator dies of the failing lease
calls, and after the outage one of them leads and runs go on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from core.events import RunSucceeded
from services.nats import NatsBackplane, connect
from services.orchestrator import LEASE_TTL_S, Orchestrator
from tests.rolekit import DIAMOND, schedule, stand_in_agent, succeed, until_end
from tests.waiting import eventually

if TYPE_CHECKING:
    from services.embedded_nats import EmbeddedNats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@contextlib.asynccontextmanager
async def orchestrator(url: str) -> AsyncIterator[tuple[Orchestrator, asyncio.Task[None]]]:
    conn = await connect(url, name="orchestrator")
    orch = Orchestrator(conn)
    stop = asyncio.Event()
    task = asyncio.ensure_future(orch.run(stop))
    try:
        yield orch, task
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 20)
        finally:
            await conn.close()


async def _true(value: bool) -> bool | None:
    return True if value else None


def test_the_orchestrator_knows_the_buckets_lease_ttl() -> None:
    from services.nats.provisioning import LEASE_TTL

    assert LEASE_TTL_S == LEASE_TTL  # it steps down LEASE_MARGIN_S before this runs out


async def test_an_outage_longer_than_the_ttl_leaves_one_leader(
    backplane: NatsBackplane, nats_server: EmbeddedNats
) -> None:
    async with orchestrator(backplane.url) as (a, a_task), orchestrator(backplane.url) as (b, _):
        both = [(a, a_task), (b, _)]
        await eventually(lambda: _true(a.live), what="the first orchestrator to lead")
        deciders: list[int] = []

        async def watch() -> None:  # how many orchestrators may decide, every few ms
            while True:
                deciders.append(sum(o.deciding() for o, _ in both))
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        try:
            nats_server.stop()
            await eventually(lambda: _true(not a.leading), what="the leader to step down")
            renewed_at = a.renewed_at  # its last renewal: the lease is gone TTL after it
            await eventually(
                lambda: _true(a.clock() > renewed_at + LEASE_TTL_S + 1),
                timeout=LEASE_TTL_S + 10,
                what="the outage to outlast the lease",
            )
            assert not any(task.done() for _, task in both)  # no lease error killed either
            nats_server.start()  # same port, same store

            await eventually(
                lambda: _true(a.live or b.live), timeout=30, what="one orchestrator to lead again"
            )
            async with stand_in_agent(backplane, succeed):

                async def scheduled() -> str | None:
                    return await schedule(backplane, DIAMOND, "d")  # fails until reconnected

                run_id = await eventually(scheduled, what="NATS back")
                events = await until_end(backplane, run_id, timeout=30)
        finally:
            watcher.cancel()
        assert not any(task.done() for _, task in both)
    assert isinstance(events[-1], RunSucceeded)
    assert max(deciders) == 1  # never two at once
    assert deciders.count(0) > 0  # and, during the outage, none
