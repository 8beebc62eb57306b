"""Schedules as definitions and as decisions: the YAML forms and their errors, run ids per slot,
which slots are due, and `plan_tick` over random tick sequences (each slot claimed at most once,
in order, never in the future; catch-up and max_active_runs as documented)."""

from __future__ import annotations

import datetime as dt
import textwrap

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from core.definitions import check_definitions, parse_definitions
from core.ids import check_run_id
from core.schedules import (
    REFIRE_WINDOW,
    CronSchedule,
    ScheduleMark,
    due_slots,
    last_run_candidates,
    plan_tick,
    schedules_of,
    slot_run_id,
)

UTC = dt.UTC


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 1, day, hour, minute, second, tzinfo=UTC)


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def errors_of(files: dict[str, str]) -> list[str]:
    defs, errors = parse_definitions(files)
    return [str(e) for e in errors + check_definitions(defs)]


TASKS = {"tasks/a.yaml": "id: a\ncommand: echo a\n", "contexts/prod.yaml": "id: prod\n"}


# -- definitions --------------------------------------------------------------------------------


def test_short_and_long_forms_on_tasks_and_dags() -> None:
    files = {
        **TASKS,
        "tasks/t.yaml": "id: t\ncommand: x\nschedule: '*/5 * * * *'\n",
        "dags/d.yaml": y("""
            id: d
            max_active_runs: 3
            schedule:
              cron: '0 2 * * *'
              timezone: Europe/London
              catchup: true
              context: prod
              params: {MODE: full, a.N: 2, FLAG: true}
            tasks: [{id: a}]
            """),
        "dags/e.yaml": "id: e\nschedule: {cron: '@daily', max_active_runs: 2}\ntasks: [{id: a}]\n",
    }
    defs, errors = parse_definitions(files)
    assert errors + check_definitions(defs) == []
    assert schedules_of(defs) == [
        CronSchedule(
            kind="dag",
            id="d",
            cron="0 2 * * *",
            timezone="Europe/London",
            catchup=True,
            max_active_runs=3,  # the DAG's own, which the original documented
            context="prod",
            params=("FLAG=true", "MODE=full", "a.N=2"),
        ),
        CronSchedule(kind="dag", id="e", cron="@daily", max_active_runs=2),
        CronSchedule(kind="task", id="t", cron="*/5 * * * *"),
    ]


def test_schedule_errors_name_the_file_and_key() -> None:
    files = {
        **TASKS,
        "tasks/t.yaml": "id: t\ncommand: x\nschedule: {cron: '0 25 * * *', timezone: Mars/Base}\n",
        "tasks/u.yaml": "id: u\ncommand: x\nschedule: {cron: '@daily', context: prd}\n",
        "tasks/v.yaml": "id: v\ncommand: x\nschedule: {cron: '@daily', every: 5}\n",
        "tasks/w.yaml": "id: w\ncommand: x\nschedule: {cron: '@daily', params: {'a b': 1}}\n",
        "tasks/z.yaml": "id: z\ncommand: x\nschedule: {cron: '@daily', max_active_runs: 0}\n",
        "dags/d.yaml": y("""
            id: d
            max_active_runs: 2
            schedule: {cron: '@daily', max_active_runs: 1}
            tasks: [{id: a}]
            """),
    }
    assert sorted(errors_of(files)) == [
        "dags/d.yaml: schedule.max_active_runs: max_active_runs is also set on the DAG: "
        "set it in one place",
        "tasks/t.yaml: schedule.cron: invalid cron '0 25 * * *': "
        "hour field '25': 25 is out of range 0-23",
        "tasks/t.yaml: schedule.timezone: unknown timezone 'Mars/Base' "
        "(use an IANA name such as 'UTC' or 'Europe/London')",
        "tasks/u.yaml: schedule.context: unknown context 'prd' (did you mean 'prod'?)",
        "tasks/v.yaml: schedule.every: unknown field "
        "(allowed: cron, timezone, catchup, max_active_runs, context, params)",
        "tasks/w.yaml: schedule.params.a b: invalid parameter name 'a b': expected KEY or "
        "TASK.KEY (letters, digits and '_'; a task id may also hold '-')",
        "tasks/z.yaml: schedule.max_active_runs: expected an integer >= 1, got an integer 0",
    ]


# -- run ids and due slots ----------------------------------------------------------------------


def test_run_ids_are_readable_valid_and_distinct_per_kind_and_slot() -> None:
    slot = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert slot_run_id("dag", "nightly_etl", slot) == "nightly_etl-cron-20261201T0200Z"
    assert slot_run_id("task", "nightly_etl", slot) == "nightly_etl-cron-task-20261201T0200Z"
    long = "x" * 128
    ids = {slot_run_id(kind, owner, slot) for kind in ("dag", "task") for owner in (long, "y")}
    assert len(ids) == 4
    assert all(check_run_id(i) and len(i) <= 128 for i in ids)
    assert slot_run_id("dag", long, slot) != slot_run_id("dag", long[:-1] + "z", slot)


def hourly(catchup: bool, max_active: int = 1) -> CronSchedule:
    return CronSchedule(
        kind="dag", id="h", cron="0 * * * *", catchup=catchup, max_active_runs=max_active
    )


def test_without_catchup_only_the_newest_missed_slot_is_due() -> None:
    due = due_slots(hourly(False), at(1, 0, 30), at(1, 5, 10))
    assert due.slots == (at(1, 5),)
    assert due.skipped == 4


def test_with_catchup_every_missed_slot_is_due_oldest_first_up_to_the_bound() -> None:
    due = due_slots(hourly(True), at(1, 0, 30), at(1, 5, 10))
    assert due.slots == (at(1, 1), at(1, 2), at(1, 3), at(1, 4), at(1, 5))
    assert due.skipped == 0
    bounded = due_slots(hourly(True), at(1, 0, 30), at(1, 5, 10), limit=2)
    assert bounded.slots == (at(1, 4), at(1, 5))  # the newest two
    assert bounded.skipped == 3


# -- plan_tick ----------------------------------------------------------------------------------


def test_first_look_starts_from_now_and_fires_nothing_historic() -> None:
    tick = plan_tick(hourly(True), None, at(1, 5, 10))
    assert tick.mark == ScheduleMark(last=at(1, 5, 10))
    assert tick.claimed == ()


def test_one_claim_per_slot_however_often_it_ticks() -> None:
    mark = ScheduleMark(last=at(1, 0, 30))
    tick = plan_tick(hourly(False), mark, at(1, 1, 0, 5))
    assert [c.run_id for c in tick.claimed] == ["h-cron-20260101T0100Z"]
    again = plan_tick(hourly(False), tick.mark, at(1, 1, 0, 9))
    assert again.claimed == () and not again.changed


def test_max_active_runs_holds_a_slot_back_until_a_run_ends() -> None:
    sched = hourly(True)
    first = plan_tick(sched, ScheduleMark(last=at(1, 0, 30)), at(1, 1, 0, 1))
    run1 = first.claimed[0].run_id
    held = plan_tick(sched, first.mark, at(1, 2, 0, 1))  # run1 still open
    assert held.claimed == () and held.held == 1
    assert held.mark.last == at(1, 1)  # the 02:00 slot stays due: held, not skipped
    released = plan_tick(sched, held.mark, at(1, 2, 7), ended={run1})
    assert [c.slot for c in released.claimed] == [at(1, 2)]
    assert [c.run_id for c in released.mark.open] == ["h-cron-20260101T0200Z"]


def test_a_claim_whose_run_is_missing_is_started_again_within_the_window() -> None:
    first = plan_tick(hourly(False), ScheduleMark(last=at(1, 0, 30)), at(1, 1, 0, 1))
    claim = first.claimed[0]
    soon = plan_tick(hourly(False), first.mark, at(1, 1, 0, 30), missing={claim.run_id})
    assert soon.restart == (claim,) and soon.claimed == ()
    late = at(1, 1, 0, 1) + REFIRE_WINDOW + dt.timedelta(seconds=1)
    given_up = plan_tick(hourly(False), first.mark, late, missing={claim.run_id})
    assert given_up.restart == () and given_up.mark.open == ()


def test_last_run_candidates_newest_first() -> None:
    first = plan_tick(hourly(False), ScheduleMark(last=at(1, 0, 30)), at(1, 1, 0, 1))
    assert last_run_candidates(hourly(False), first.mark) == ["h-cron-20260101T0100Z"]
    assert last_run_candidates(hourly(False), None) == []


@settings(max_examples=max(10, settings().max_examples // 10))  # up to 25 ticks over days
@given(
    catchup=st.booleans(),
    max_active=st.integers(1, 3),
    # Gaps between ticks: mostly seconds to minutes, sometimes an outage of hours or days.
    gaps=st.lists(
        st.one_of(st.integers(1, 600), st.integers(3600, 3 * 86400)), min_size=1, max_size=25
    ),
    ending=st.lists(st.booleans(), min_size=25, max_size=25),
)
def test_claims_over_random_ticks(
    catchup: bool, max_active: int, gaps: list[int], ending: list[bool]
) -> None:
    sched = CronSchedule(
        kind="dag", id="q", cron="*/15 * * * *", catchup=catchup, max_active_runs=max_active
    )
    now = at(1)
    tick = plan_tick(sched, None, now)
    mark = tick.mark
    claimed: list[tuple[dt.datetime, str]] = []
    for gap, end_one in zip(gaps, ending, strict=False):
        now += dt.timedelta(seconds=gap)
        # Sometimes the oldest open run ends before this tick.
        ended = {mark.open[0].run_id} if end_one and mark.open else set()
        tick = plan_tick(sched, mark, now, ended=ended)
        for claim in tick.claimed:
            assert claim.slot <= now  # none in the future
            assert claim.run_id == slot_run_id("dag", "q", claim.slot)
            claimed.append((claim.slot, claim.run_id))
        assert len(tick.mark.open) <= max_active
        assert tick.mark.last <= now
        if not catchup:
            assert len(tick.claimed) <= 1
        if not tick.held:  # every due slot was dealt with: nothing due is left behind
            assert due_slots(sched, tick.mark.last, now).slots == ()
        mark = tick.mark
    slots = [slot for slot, _ in claimed]
    assert slots == sorted(set(slots))  # strictly increasing: each slot at most once
    assert len({run_id for _, run_id in claimed}) == len(claimed)


def test_a_given_up_outage_is_counted_once_and_a_held_one_not_at_all() -> None:
    mark = ScheduleMark(last=at(1, 0, 30))
    tick = plan_tick(hourly(False, max_active=5), mark, at(1, 5, 10))
    assert (len(tick.claimed), tick.skipped, tick.held) == (1, 4, 0)
    busy = plan_tick(hourly(False), tick.mark, at(1, 9, 10))  # its one run is still open
    assert (busy.claimed, busy.skipped, busy.held) == ((), 0, 1)


def test_the_stored_mark_reads_newer_fields_and_writes_every_default() -> None:
    data = b'{"last": "2026-01-01T00:30:00Z", "open": [{"run_id": "r", "slot": ' + (
        b'"2026-01-01T00:00:00Z", "claimed_at": "2026-01-01T00:00:01Z", "by": "x"}], "v": 2}'
    )
    mark = msgspec.json.decode(data, type=ScheduleMark)
    assert mark.open[0].run_id == "r"
    assert msgspec.json.decode(msgspec.json.encode(ScheduleMark(last=at(1)))) == {
        "last": "2026-01-01T00:00:00Z",
        "open": [],
    }
