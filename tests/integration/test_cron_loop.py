"""The cron loop against a real nats-server, on an injected clock (no real minutes pass): one
run per slot, daylight-saving days, catch-up after an outage both ways, two loops on one NATS
(and one of them failing over to the other, also between claiming a slot and starting its run),
and max_active_runs holding a slot back until a run ends."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import msgspec
import pytest

from core.definitions import ContextDef, DagDef, DagTask, Definitions, Schedule, TaskDef
from core.events import RunScheduled
from core.schedules import Claim, CronSchedule, ScheduleMark, slot_run_id
from services.cron import CronLoop
from services.nats import NatsBackplane, connect
from tests.rolekit import running_orchestrator, stand_in_agent, until_end

if TYPE_CHECKING:
    from core.definitions import Definitions as Defs
    from services.ports import Backplane, ScheduleMarks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

UTC = dt.UTC


def at(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


class Clock:
    """The loops' `now`: moved by the test."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


# No orchestrator runs in most tests, so no run ends: room for all of them.
HOURLY = Schedule(cron="0 * * * *", max_active_runs=100)


def scheduled_defs(**schedules: Schedule | str) -> Definitions:
    """One DAG per keyword (`id=schedule`), each running task `work`."""
    return Definitions(
        tasks={"work": TaskDef(id="work", command="true")},
        dags={
            dag_id: DagDef(id=dag_id, tasks=(DagTask(id="work"),), schedule=schedule)
            for dag_id, schedule in schedules.items()
        },
    )


def new_loop(backplane: NatsBackplane, clock: Clock) -> CronLoop:
    return CronLoop(backplane.events, backplane.definitions, backplane.schedules, clock=clock)


async def all_scheduled(backplane: Backplane) -> list[RunScheduled]:
    """Every RunScheduled in the log, in log order."""
    found: list[RunScheduled] = []
    if await backplane.events.last_seq() == 0:
        return found
    async for _seq, event, pending in backplane.events.tail():
        if isinstance(event, RunScheduled):
            found.append(event)
        if pending == 0:
            break
    return found


def ids(dag: str, *slots: dt.datetime) -> list[str]:
    return [slot_run_id("dag", dag, slot) for slot in slots]


async def test_one_run_per_slot_however_often_it_ticks(backplane: NatsBackplane) -> None:
    await backplane.definitions.put(scheduled_defs(hourly=HOURLY))
    clock = Clock(at(1, 10, 10, 20, 0))
    loop = new_loop(backplane, clock)
    assert await loop.tick() == []  # the first look starts from now: 10:00 is history
    started: list[str] = []
    for minute in range(25, 60 * 3, 5):  # every 5 minutes until 13:00
        clock.now = at(1, 10, 10, 20) + dt.timedelta(minutes=minute - 20)
        started += await loop.tick()
        started += await loop.tick()  # twice at the same time: nothing more
    assert started == ids("hourly", at(1, 10, 11), at(1, 10, 12))
    runs = await all_scheduled(backplane)
    assert [r.run_id for r in runs] == started
    assert {r.trigger for r in runs} == {"cron"}
    assert {(r.kind, r.target) for r in runs} == {("dag", "hourly")}


async def test_a_restarted_loop_does_not_fire_a_slot_again(backplane: NatsBackplane) -> None:
    await backplane.definitions.put(scheduled_defs(hourly=HOURLY))
    clock = Clock(at(1, 10, 10, 50))
    await new_loop(backplane, clock).tick()
    clock.now = at(1, 10, 11, 0, 1)
    assert await new_loop(backplane, clock).tick() == ids("hourly", at(1, 10, 11))
    # A new process (no memory of its own) at the same and later times within the hour.
    for second in (2, 30, 59 * 60):
        clock.now = at(1, 10, 11) + dt.timedelta(seconds=second)
        assert await new_loop(backplane, clock).tick() == []
    assert len(await all_scheduled(backplane)) == 1


@pytest.mark.parametrize(
    ("zone", "cron", "start", "expected"),
    [
        # London, spring forward 2026-03-29: 01:30 does not exist; it fires at the jump
        # (01:00 UTC = 02:00 BST), and the next day at 01:30 BST (00:30 UTC).
        ("Europe/London", "30 1 * * *", at(3, 28, 12), [at(3, 29, 1, 0), at(3, 30, 0, 30)]),
        # London, fall back 2026-10-25: 01:30 happens twice; it fires once, at 01:30 BST.
        ("Europe/London", "30 1 * * *", at(10, 24, 12), [at(10, 25, 0, 30), at(10, 26, 1, 30)]),
        # New York, spring forward 2026-03-08 (02:00 EST -> 03:00 EDT at 07:00 UTC).
        ("America/New_York", "30 2 * * *", at(3, 7, 12), [at(3, 8, 7, 0), at(3, 9, 6, 30)]),
        # New York, fall back 2026-11-01: 01:30 EDT (05:30 UTC) only, not 01:30 EST.
        ("America/New_York", "30 1 * * *", at(10, 31, 12), [at(11, 1, 5, 30), at(11, 2, 6, 30)]),
    ],
)
async def test_daylight_saving_days(
    backplane: NatsBackplane, zone: str, cron: str, start: dt.datetime, expected: list[dt.datetime]
) -> None:
    await backplane.definitions.put(
        scheduled_defs(dst=Schedule(cron=cron, timezone=zone, max_active_runs=100))
    )
    clock = Clock(start)
    loop = new_loop(backplane, clock)
    started: list[str] = []
    while clock.now < start + dt.timedelta(hours=48):  # every 10 minutes for two days
        started += await loop.tick()
        clock.now += dt.timedelta(minutes=10)
    assert started == ids("dst", *expected)


async def test_catch_up_after_an_outage_both_ways(backplane: NatsBackplane) -> None:
    await backplane.definitions.put(
        scheduled_defs(
            every=Schedule(cron="0 * * * *", catchup=True, max_active_runs=10),
            latest=Schedule(cron="0 * * * *", catchup=False, max_active_runs=10),
            bounded=Schedule(cron="* * * * *", catchup=True, max_active_runs=200),
        )
    )
    clock = Clock(at(1, 10, 0, 30))
    loop = new_loop(backplane, clock)
    await loop.tick()
    clock.now = at(1, 10, 5, 10)  # down for 4 h 40 min; in a fresh process
    started = await new_loop(backplane, clock).tick()
    runs = await all_scheduled(backplane)
    assert [r.run_id for r in runs] == started
    every = [r.run_id for r in runs if r.target == "every"]
    assert every == ids("every", *(at(1, 10, h) for h in (1, 2, 3, 4, 5)))  # oldest first
    assert [r.run_id for r in runs if r.target == "latest"] == ids("latest", at(1, 10, 5))
    bounded = [r.run_id for r in runs if r.target == "bounded"]
    newest = [at(1, 10, 5, 10) - dt.timedelta(minutes=m) for m in range(99, -1, -1)]
    assert bounded == ids("bounded", *newest)  # the newest 100 of 280 missed, oldest first


async def test_a_caught_up_run_gets_its_slots_date_not_todays(backplane: NatsBackplane) -> None:
    defs = scheduled_defs(
        daily=Schedule(cron="0 6 * * *", catchup=True, context="dated", max_active_runs=5)
    )
    dated = ContextDef(id="dated", variables={"DAY": "${DATE}", "AT": "${DATETIME}"})
    await backplane.definitions.put(msgspec.structs.replace(defs, contexts={"dated": dated}))
    clock = Clock(at(1, 10, 12))
    await new_loop(backplane, clock).tick()
    clock.now = at(1, 13, 9)  # three mornings missed, caught up on the 13th
    await new_loop(backplane, clock).tick()
    runs = await all_scheduled(backplane)
    assert [r.context["DAY"] for r in runs] == ["2026-01-11", "2026-01-12", "2026-01-13"]
    assert runs[0].context["AT"] == "2026-01-11T06:00:00Z"


async def test_two_loops_fire_each_slot_once_and_one_takes_over(nats_url: str) -> None:
    first = await connect(nats_url, name="orchestrator-1")
    second = await connect(nats_url, name="orchestrator-2")
    try:
        await first.definitions.put(
            scheduled_defs(
                often=Schedule(cron="*/10 * * * *", max_active_runs=1000),
                caught=Schedule(cron="*/10 * * * *", catchup=True, max_active_runs=1000),
            )
        )
        clock = Clock(at(1, 10, 0, 1))
        one, two = new_loop(first, clock), new_loop(second, clock)
        started: list[str] = []
        for _ in range(30):  # both, at once, every 4 minutes for two hours
            clock.now += dt.timedelta(minutes=4)
            for got in await asyncio.gather(one.tick(), two.tick(), one.tick()):
                started += got
        await first.close()  # the first orchestrator goes away; the second goes on alone
        for _ in range(15):
            clock.now += dt.timedelta(minutes=4)
            started += await two.tick()
        slots = [at(1, 10, 0, 10) + dt.timedelta(minutes=10 * i) for i in range(18)]
        runs = await all_scheduled(second)
        for dag in ("often", "caught"):
            assert sorted(r.run_id for r in runs if r.target == dag) == ids(dag, *slots)
        assert sorted(started) == sorted(r.run_id for r in runs)  # each started once
    finally:
        await first.close()
        await second.close()


class ClaimsThenDies(CronLoop):
    """A loop whose process dies after storing its claim and before starting the run."""

    async def start(self, defs: Defs, sched: CronSchedule, claim: Claim) -> str:
        raise asyncio.CancelledError


async def test_a_claim_left_by_a_dead_loop_is_started_by_the_other(nats_url: str) -> None:
    first = await connect(nats_url, name="orchestrator-1")
    second = await connect(nats_url, name="orchestrator-2")
    try:
        await first.definitions.put(scheduled_defs(hourly=HOURLY))
        clock = Clock(at(1, 10, 10, 59))
        dying = ClaimsThenDies(first.events, first.definitions, first.schedules, clock=clock)
        await dying.tick()
        clock.now = at(1, 10, 11, 0, 1)
        with pytest.raises(asyncio.CancelledError):
            await dying.tick()
        assert await all_scheduled(second) == []  # claimed, not started
        clock.now = at(1, 10, 11, 0, 3)
        assert await new_loop(second, clock).tick() == ids("hourly", at(1, 10, 11))
        assert [r.run_id for r in await all_scheduled(second)] == ids("hourly", at(1, 10, 11))
    finally:
        await first.close()
        await second.close()


async def test_max_active_runs_holds_a_slot_back_until_a_run_ends(
    backplane: NatsBackplane,
) -> None:
    defs = scheduled_defs(held=Schedule(cron="0 * * * *", catchup=True))  # max_active_runs 1
    await backplane.definitions.put(defs)
    release = asyncio.Event()

    async def wait_for_release(_: object) -> bool:
        await release.wait()
        return True

    async def connect_again() -> Backplane:
        return await connect(backplane.url, name="orchestrator")

    async with (
        running_orchestrator(connect_again),
        stand_in_agent(backplane, wait_for_release),
    ):
        clock = Clock(at(1, 10, 0, 30))
        loop = new_loop(backplane, clock)
        await loop.tick()
        clock.now = at(1, 10, 1, 0, 5)
        [run1] = await loop.tick()
        for minute in (0, 1, 30, 59):  # 02:00 and 03:00 are due, run 1 still open
            clock.now = at(1, 10, 2, minute, 5)
            assert await loop.tick() == []
        clock.now = at(1, 10, 3, 0, 5)
        assert await loop.tick() == []
        release.set()
        await until_end(backplane, run1)
        # Held back, not skipped: 02:00 fires now (catch-up on), then 03:00 after it ends.
        assert await loop.tick() == ids("held", at(1, 10, 2))
        await until_end(backplane, ids("held", at(1, 10, 2))[0])
        assert await loop.tick() == ids("held", at(1, 10, 3))
    runs = [r.run_id for r in await all_scheduled(backplane)]
    assert runs == ids("held", at(1, 10, 1), at(1, 10, 2), at(1, 10, 3))


async def test_a_schedule_whose_run_cannot_be_planned_does_not_block(
    backplane: NatsBackplane,
) -> None:
    # The schedule's parameter names a task outside the run: every slot is refused, logged,
    # and its claim dropped, so it never counts against max_active_runs.
    bad = Schedule(cron="0 * * * *", params={"ghost.X": 1})  # max_active_runs 1
    await backplane.definitions.put(scheduled_defs(bad=bad))
    clock = Clock(at(1, 10, 0, 30))
    loop = new_loop(backplane, clock)
    await loop.tick()
    for hour in (1, 2):
        clock.now = at(1, 10, hour, 0, 5)
        assert await loop.tick() == []
    mark, _ = await backplane.schedules.get("dag.bad")
    assert mark is not None
    assert mark.open == ()
    assert mark.last == at(1, 10, 2)
    assert msgspec.json.decode(msgspec.json.encode(mark))["last"].startswith("2026-01-10T02")


class ReadTogether:
    """Schedule marks on NATS whose reads wait for the other loop's read: both decide on the
    same revision, the race a compare-and-set must settle."""

    def __init__(self, inner: ScheduleMarks, barrier: asyncio.Barrier) -> None:
        self.inner, self.barrier = inner, barrier

    async def get(self, key: str) -> tuple[ScheduleMark | None, int]:
        got = await self.inner.get(key)
        await self.barrier.wait()
        return got

    async def put(self, key: str, mark: ScheduleMark, revision: int) -> int:
        return await self.inner.put(key, mark, revision)


async def test_two_loops_never_exceed_max_active_runs_between_them(nats_url: str) -> None:
    """Two loops read the same mark, each with a different slot due (clocks an hour apart):
    the compare-and-set lets one claim; the other sees the open run next time and holds."""
    first = await connect(nats_url, name="orchestrator-1")
    second = await connect(nats_url, name="orchestrator-2")
    try:
        await first.definitions.put(scheduled_defs(one=Schedule(cron="0 * * * *")))
        early, late = Clock(at(1, 10, 9, 30)), Clock(at(1, 10, 9, 30))
        await new_loop(first, early).tick()
        barrier = asyncio.Barrier(2)
        one, two = (
            CronLoop(bp.events, bp.definitions, ReadTogether(bp.schedules, barrier), clock=clock)
            for bp, clock in ((first, early), (second, late))
        )
        for hour in range(10, 16):
            early.now, late.now = at(1, 10, hour, 0, 5), at(1, 10, hour + 1, 0, 5)
            await asyncio.gather(one.tick(), two.tick())
        assert len(await all_scheduled(first)) == 1  # no run ends here: the first stays open
    finally:
        await first.close()
        await second.close()
