"""One leader at a time, when the lease cannot be renewed (on the in-memory fake, whose lease
calls can be made to fail for one connection, and whose clock the test moves).

A leader whose renewals fail stops deciding before its lease can expire and waits as a standby;
a standby whose lease calls fail keeps trying; whoever takes the lease rebuilds its state from
the log, so a decision folded but never stored is decided again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import pytest

from core.events import (
    TERMINAL,
    Dispatch,
    RunScheduled,
    RunSucceeded,
    TaskStarted,
    TaskSucceeded,
    decode,
    encode,
    msg_id,
)
from services import orchestrator as orchestrator_module
from services.orchestrator import LEASE, LEASE_MARGIN_S, LEASE_TTL_S, Orchestrator
from tests.fakes import LEASE_TTL, MemoryBackplane, MemoryServer
from tests.fakes.faults import EVERY_CALL
from tests.rolekit import (
    DIAMOND,
    defs,
    queued_attempts,
    schedule,
    stand_in_agent,
    succeed,
    until_end,
)
from tests.waiting import eventually

pytestmark = pytest.mark.timeout(60)

LEADER, STANDBY, CLIENT = "leader", "standby", "client"
# Written by the test or the stand-in agent; everything else is a decision.
NOT_DECISIONS = (RunScheduled, TaskStarted, TaskSucceeded)


@pytest.fixture(autouse=True)
def fast_lease_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renew and poll every 20 ms of real time; the lease's age moves with the fake's clock."""
    monkeypatch.setattr(orchestrator_module, "LEASE_RENEW_S", 0.02)
    monkeypatch.setattr(orchestrator_module, "LEASE_RETRY_S", 0.02)
    monkeypatch.setattr(orchestrator_module, "CHECKPOINT_EVERY_S", 0.05)


def test_the_orchestrator_knows_the_lease_ttl() -> None:
    assert LEASE_TTL_S == LEASE_TTL  # the fake's, which is the NATS adapter's
    assert 0 < LEASE_MARGIN_S < LEASE_TTL_S - orchestrator_module.LEASE_RENEW_S


@contextlib.asynccontextmanager
async def orchestrator(server: MemoryServer, name: str) -> AsyncIterator[asyncio.Task[None]]:
    """An orchestrator on a connection of its own named `name`, measuring its lease's age on the
    fake's clock; its task, which the test may inspect (it must never end by itself)."""
    conn = server.connect(name)
    orch = Orchestrator(conn, clock=server.clock.now)
    stop = asyncio.Event()
    task: asyncio.Task[None] = asyncio.ensure_future(orch.run(stop))
    task.orch = orch  # type: ignore[attr-defined]
    try:
        yield task
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        finally:
            await conn.close()


def of(task: asyncio.Task[None]) -> Orchestrator:
    orch: Orchestrator = task.orch  # type: ignore[attr-defined]
    return orch


async def _true(value: bool) -> bool | None:
    return True if value else None


def writers(server: MemoryServer, run_id: str) -> set[str | None]:
    """Which connections stored the decisions of a run."""
    return {
        m.writer for m in server.events.run(run_id) if not isinstance(decode(m.data), NOT_DECISIONS)
    }


async def test_a_leader_that_cannot_renew_stops_deciding_before_its_lease_can_expire() -> None:
    server = MemoryServer()
    clock, faults = server.clock, server.faults
    async with (
        server.connect(CLIENT) as bp,
        stand_in_agent(bp, succeed),
        orchestrator(server, LEADER) as leader_task,
    ):
        leader = of(leader_task)
        await eventually(lambda: _true(leader.live), what="the leader to lead")
        first = await schedule(bp, DIAMOND, "d")
        await until_end(bp, first)

        # The leader is cut off from its lease; its renewals raise a timeout (an exception
        # the Leases port should never let through; the keeper must survive it anyway).
        faults.fail_lease_calls(EVERY_CALL, connection=LEADER, error=TimeoutError)

        async def renewals_failed() -> bool | None:
            return True if faults.failing_lease_calls <= EVERY_CALL - 3 else None

        await eventually(renewals_failed, what="three renewals to fail")
        assert leader.deciding() and not leader_task.done()  # still within its margin

        clock.advance(LEASE_TTL_S - LEASE_MARGIN_S + 0.5)  # past the margin, before expiry
        await eventually(lambda: _true(not leader.leading), what="the leader to step down")
        assert not leader.deciding() and not leader.live
        # It stopped before its lease could expire: nobody else can have taken it yet.
        assert await bp.leases.holder(LEASE) == leader.holder

        second = await schedule(bp, DIAMOND, "d")  # nobody may decide it now
        async with orchestrator(server, STANDBY) as standby_task:
            standby = of(standby_task)
            clock.advance(LEASE_MARGIN_S)  # the leader's lease expires
            await eventually(lambda: _true(standby.live), what="the standby to take over")
            assert isinstance((await until_end(bp, second))[-1], RunSucceeded)
            # The old leader, cut off, keeps failing to acquire, and survives it.
            calls_before = faults.failing_lease_calls
            await eventually(
                lambda: _true(faults.failing_lease_calls < calls_before - 2),
                what="the old leader's acquire attempts to fail",
            )
            assert not leader_task.done() and not leader.leading

            faults.heal_leases()  # reachable again: a standby behind the new leader
        # The new leader stopped (its lease released): the old one leads again, with its
        # state rebuilt from the log.
        await eventually(lambda: _true(leader.live), what="the old leader to lead again")
        third = await schedule(bp, DIAMOND, "d")
        assert isinstance((await until_end(bp, third))[-1], RunSucceeded)
        assert not leader_task.done()

    # One decider per run: every decision was stored by the orchestrator that led then.
    assert writers(server, first) == {LEADER}
    assert writers(server, second) == {STANDBY}
    assert writers(server, third) == {LEADER}


async def test_after_an_outage_longer_than_the_ttl_it_decides_again_what_it_never_stored() -> None:
    """Alone, cut off from NATS (lease calls, appends and dispatches fail): the decision it
    folds meanwhile (b queued after a's success) is never stored; it steps down, and once it
    holds the lease again it replays the log and decides b again."""
    server = MemoryServer()
    clock, faults = server.clock, server.faults
    chain = defs(*[t for t in DIAMOND.tasks.values() if t.id in ("a", "b")])

    async def hold_a(d: Dispatch) -> bool | None:
        return None if d.task_id == "a" else True  # a: started, never answered

    async with (
        server.connect(CLIENT) as bp,
        stand_in_agent(bp, hold_a),
        orchestrator(server, LEADER) as leader_task,
    ):
        leader = of(leader_task)
        await eventually(lambda: _true(leader.live), what="the leader to lead")
        run_id = await schedule(bp, chain, "b")
        await until_started(bp, run_id, "a")

        faults.fail_lease_calls(EVERY_CALL, connection=LEADER)
        faults.fail_appends(EVERY_CALL)
        faults.fail_dispatches(EVERY_CALL)
        # a's success reaches the log by another way than the faulty publish path.
        now = dt.datetime.now(dt.UTC)
        done_a = TaskSucceeded(run_id=run_id, ts=now, task_id="a", attempt=1)
        server.inject_event_bytes(run_id, encode(done_a), msg_id(done_a))

        async def b_decided() -> bool | None:
            state = leader.runs.get(run_id)
            return True if state is not None and "b" in state.queued else None

        await eventually(b_decided, what="b to be folded as queued (its append failing)")
        clock.advance(LEASE_TTL_S - LEASE_MARGIN_S + 0.5)
        await eventually(lambda: _true(not leader.leading), what="the leader to step down")
        faults.failing_appends = faults.failing_dispatches = 0  # NATS is back...
        faults.heal_leases()
        clock.advance(LEASE_MARGIN_S)  # ...after the lease expired
        events = await until_end(bp, run_id)
        assert not leader_task.done()
    assert isinstance(events[-1], RunSucceeded)
    assert sum(isinstance(e, TERMINAL) for e in events) == 1
    assert queued_attempts(events) == [("a", 1), ("b", 1)]


async def until_started(bp: MemoryBackplane, run_id: str, task_id: str) -> None:
    async def started() -> bool | None:
        history = await bp.events.history(run_id)
        return (
            True
            if any(isinstance(e, TaskStarted) and e.task_id == task_id for _, e in history)
            else None
        )

    await eventually(started, what=f"{task_id} to start")
