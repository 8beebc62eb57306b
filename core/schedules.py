"""Cron schedules as the scheduler sees them: which slots are due, and the record that makes each
slot fire exactly once.

Pure: the cron loop (`services.cron`) reads a schedule's `ScheduleMark` from its bucket, asks
`plan_tick` what to do, writes the new mark (compare-and-set on its revision) and only then starts
the runs it claimed. Exactly once rests on two facts:
- a slot's run id is a function of (owner, slot) (`slot_run_id`), and the event log admits one
  first event per run id, so firing a slot twice starts one run;
- a slot is claimed in the mark before its run is started, and any loop finishing a claim whose
  run is missing starts it, so a crash between claim and start loses nothing.
`max_active_runs` counts the claims whose runs have not ended (looked up in the event log by their
deterministic ids); a due slot is held back, not dropped, while that many are open.
"""

from __future__ import annotations

import datetime as dt
import zlib
from typing import TYPE_CHECKING, Final, Literal

import msgspec

from core.cron import CronSpec, next_fires, parse_cron, previous_fires, zone
from core.definitions.model import Definitions, Schedule, env_value

if TYPE_CHECKING:
    from collections.abc import Collection

__all__ = [
    "CATCHUP_LIMIT",
    "REFIRE_WINDOW",
    "Claim",
    "CronSchedule",
    "Due",
    "ScheduleMark",
    "Tick",
    "due_slots",
    "last_run_candidates",
    "plan_tick",
    "schedules_of",
    "slot_run_id",
]

OwnerKind = Literal["task", "dag"]
# After downtime, `catchup: true` fires at most this many missed slots (the newest ones, oldest
# first); older ones are skipped, so a long outage of a minutely schedule cannot flood the queues.
CATCHUP_LIMIT: Final = 100
# A claim whose run is missing is started again only this long after it was claimed: later, a
# missing run more likely ended and aged out of the log (events_max_age is at least an hour).
REFIRE_WINDOW: Final = dt.timedelta(minutes=30)
_STAMP: Final = "%Y%m%dT%H%MZ"
SKIPPED_COUNT_LIMIT: Final = 10_000


class CronSchedule(msgspec.Struct, frozen=True, kw_only=True):
    """One schedule with every default applied: a task (as an outcome) or a DAG."""

    kind: OwnerKind
    id: str
    cron: str
    timezone: str = "UTC"
    catchup: bool = False
    max_active_runs: int = 1
    context: str | None = None
    params: tuple[str, ...] = ()  # `KEY=VALUE` / `TASK.KEY=VALUE`, as the CLI takes them

    @property
    def key(self) -> str:
        """Its name in the schedules bucket (a task and a DAG may share an id)."""
        return f"{self.kind}.{self.id}"

    @property
    def spec(self) -> CronSpec:
        return parse_cron(self.cron)

    @property
    def zone(self) -> dt.tzinfo:
        return zone(self.timezone)

    def next_fires(self, after: dt.datetime, count: int) -> list[dt.datetime]:
        return next_fires(self.spec, self.zone, after, count)


def schedules_of(defs: Definitions) -> list[CronSchedule]:
    """Every schedule in the definitions, DAGs first, each sorted by id."""
    found = [
        _schedule("dag", dag_id, dag.schedule, dag.max_active_runs)
        for dag_id, dag in sorted(defs.dags.items())
        if dag.schedule is not None
    ]
    found += [
        _schedule("task", task_id, task.schedule, None)
        for task_id, task in sorted(defs.tasks.items())
        if task.schedule is not None
    ]
    return found


def _schedule(
    kind: OwnerKind, owner: str, given: Schedule | str, owner_max: int | None
) -> CronSchedule:
    if isinstance(given, str):
        return CronSchedule(kind=kind, id=owner, cron=given, max_active_runs=owner_max or 1)
    return CronSchedule(
        kind=kind,
        id=owner,
        cron=given.cron,
        timezone=given.timezone,
        catchup=given.catchup,
        max_active_runs=given.max_active_runs or owner_max or 1,
        context=given.context,
        params=tuple(f"{key}={env_value(value)}" for key, value in sorted(given.params.items())),
    )


def slot_run_id(kind: OwnerKind, owner: str, slot: dt.datetime) -> str:
    """`<dag>-cron-<UTC slot>` or `<task>-cron-task-<UTC slot>`, e.g. `etl-cron-20261201T0200Z`.

    Unique per (kind, owner, slot): the stamp has a fixed length and the two kinds end in
    different words. An owner id too long for a 128-character run id is cut and a checksum of
    the whole id appended.
    """
    stamp = slot.astimezone(dt.UTC).strftime(_STAMP)
    suffix = f"-cron-{stamp}" if kind == "dag" else f"-cron-task-{stamp}"
    room = 128 - len(suffix)
    if len(owner) > room:
        owner = f"{owner[: room - 9]}_{zlib.crc32(owner.encode()):08x}"
    return owner + suffix


class Due(msgspec.Struct, frozen=True):
    slots: tuple[dt.datetime, ...]  # oldest first, each in (last, now]
    skipped: int  # older missed slots that will not fire (no catch-up, or beyond the bound)


def due_slots(
    schedule: CronSchedule,
    last: dt.datetime,
    now: dt.datetime,
    *,
    limit: int = CATCHUP_LIMIT,
    count_skipped: bool = True,
) -> Due:
    """The slots in (`last`, `now`] that should fire, oldest first: with catch-up the newest
    `limit` of them, without it only the newest one. Skipped slots are counted up to
    SKIPPED_COUNT_LIMIT (a log line's worth), or only noticed (0 or 1) without `count_skipped`."""
    want = limit if schedule.catchup else 1
    newest = previous_fires(schedule.spec, schedule.zone, now, after=last, limit=want + 1)
    firing = newest[:want]
    skipped = len(newest) - len(firing)
    if skipped and count_skipped:
        every = previous_fires(
            schedule.spec, schedule.zone, now, after=last, limit=SKIPPED_COUNT_LIMIT + want
        )
        skipped = len(every) - len(firing)
    return Due(slots=tuple(reversed(firing)), skipped=skipped)


# -- the stored record --------------------------------------------------------------------------


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """A slot given to a run (stored: unknown fields accepted, defaults written out)."""

    run_id: str
    slot: dt.datetime
    claimed_at: dt.datetime


class ScheduleMark(msgspec.Struct, frozen=True, kw_only=True):
    """What the schedules bucket holds per schedule: the last slot considered (fired or given
    up) and the claims whose runs may still be open. Stored: read by later versions."""

    last: dt.datetime
    open: tuple[Claim, ...] = ()


class Tick(msgspec.Struct, frozen=True, kw_only=True):
    """What one look at a schedule decided."""

    mark: ScheduleMark  # to store (compare-and-set) before starting anything
    claimed: tuple[Claim, ...] = ()  # new slots: start their runs after the mark is stored
    restart: tuple[Claim, ...] = ()  # earlier claims whose runs are missing: start them again
    held: int = 0  # due slots held back by max_active_runs
    skipped: int = 0  # missed slots given up (catch-up off, or beyond its bound)
    changed: bool = False  # whether `mark` differs from the one read


def plan_tick(
    schedule: CronSchedule,
    mark: ScheduleMark | None,
    now: dt.datetime,
    *,
    ended: Collection[str] = (),
    missing: Collection[str] = (),
    limit: int = CATCHUP_LIMIT,
) -> Tick:
    """Decide one tick. `ended`: open run ids whose runs have ended; `missing`: open run ids
    with no run in the log. A schedule never seen before starts from `now`: nothing historic
    fires."""
    if mark is None:
        return Tick(mark=ScheduleMark(last=now), changed=True)
    keep: list[Claim] = []
    restart: list[Claim] = []
    for claim in mark.open:
        if claim.run_id in ended:
            continue
        if claim.run_id in missing:
            if now - claim.claimed_at > REFIRE_WINDOW:
                continue  # given up: see REFIRE_WINDOW
            restart.append(claim)
        keep.append(claim)
    # (Counting skipped slots is a walk over them: only once they are given up, not while held.)
    due = due_slots(schedule, mark.last, now, limit=limit, count_skipped=False)
    last = mark.last
    taken = {claim.run_id for claim in keep}
    claimed: list[Claim] = []
    held = 0
    for slot in due.slots:
        if len(keep) >= schedule.max_active_runs:
            held = len(due.slots) - len(claimed)
            break
        run_id = slot_run_id(schedule.kind, schedule.id, slot)
        if run_id not in taken:
            claim = Claim(run_id=run_id, slot=slot, claimed_at=now)
            keep.append(claim)
            claimed.append(claim)
        last = slot
    # Slots older than the ones that fired are given up with them (`last` passed them). Held
    # back slots stay after `last`, so they are due again next tick (with catch-up off, a newer
    # slot may supersede them meanwhile).
    new = ScheduleMark(last=last, open=tuple(keep))
    return Tick(
        mark=new,
        claimed=tuple(claimed),
        restart=tuple(restart),
        held=held,
        skipped=_skipped(schedule, mark.last, now, limit) if due.skipped and not held else 0,
        changed=new != mark,
    )


def _skipped(schedule: CronSchedule, last: dt.datetime, now: dt.datetime, limit: int) -> int:
    return due_slots(schedule, last, now, limit=limit).skipped


def last_run_candidates(schedule: CronSchedule, mark: ScheduleMark | None) -> list[str]:
    """Run ids that may be the schedule's newest run, newest first: its open claims, then the
    run of the newest slot considered (that slot may also have been skipped or superseded)."""
    if mark is None:
        return []
    ids = [claim.run_id for claim in sorted(mark.open, key=lambda c: c.slot, reverse=True)]
    newest = previous_fires(
        schedule.spec, schedule.zone, mark.last, after=mark.last - dt.timedelta(days=400), limit=1
    )
    if newest:
        run_id = slot_run_id(schedule.kind, schedule.id, newest[0])
        if run_id not in ids:
            ids.append(run_id)
    return ids
