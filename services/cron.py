"""The cron loop: starts the runs of cron schedules at their slots, exactly once per slot.

It runs inside every orchestrator process (`cyclonetix orchestrator` starts it next to the
orchestrator, with the same stop event) and needs no lease: every second it looks at each
schedule of the published definitions and
1. reads the schedule's mark from the `cx_schedules` bucket (the last slot considered and the
   claims whose runs may be open) with its revision;
2. looks up each claimed run in the event log by its deterministic id: ended, open, or missing;
3. asks `core.schedules.plan_tick` which due slots to claim (catch-up rules, `max_active_runs`);
4. stores the new mark by compare-and-set: when another orchestrator's loop wrote first, this one
   does nothing and looks again next tick;
5. starts the claimed runs (and any earlier claim whose run is missing: its claimant died between
   claiming and starting) through `services.commands.schedule`, with the slot's run id, so a
   second start of the same slot is refused by the event log (RunExists) and changes nothing.
A schedule seen for the first time starts from now: nothing historic fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import structlog

from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy
from core.errors import Conflict, Invalid, NotFound, Unavailable
from core.events import TERMINAL
from core.schedules import (
    Claim,
    CronSchedule,
    ScheduleMark,
    last_run_candidates,
    plan_tick,
    schedules_of,
)
from services.commands import ScheduleRequest, load_run, schedule
from services.ports import RunExists

if TYPE_CHECKING:
    from core.definitions import Definitions
    from services.ports import DefinitionsStore, EventLog, ScheduleMarks

__all__ = ["CronLoop", "ScheduleInfo", "describe", "utcnow"]

log = structlog.get_logger("cyclonetix.cron")

POLL_S = 1.0  # how often schedules are looked at (slots are whole minutes)
DEFINITIONS_REFRESH_S = 2.0  # as the orchestrator: definitions may change at any time


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CronLoop:
    """Fires the cron schedules of the published definitions (see the module doc).

    `clock` gives the current time (tests pass their own and call `tick()` after moving it)."""

    def __init__(
        self,
        events: EventLog,
        definitions: DefinitionsStore,
        marks: ScheduleMarks,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        poll: float = POLL_S,
        refresh: float = DEFINITIONS_REFRESH_S,
        env_policy: EnvPolicy = DEFAULT_ENV_POLICY,
    ) -> None:
        self.events = events
        self.store = definitions
        self.marks = marks
        self.clock = clock
        self.poll = poll
        self.refresh = refresh
        self.env_policy = env_policy  # what no parameter of a scheduled run may set
        self._defs: Definitions | None = None
        self._defs_at = -float("inf")
        self._failing: str | None = None  # the last tick's error, logged once until it changes

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every `poll` seconds until `stop` is set; errors are logged, never raised."""
        log.info("cron.started")
        while not stop.is_set():
            try:
                await self.tick()
                self._failing = None
            except Exception as exc:  # noqa: BLE001 - NATS away, or a bug: never stop firing
                if str(exc) != self._failing:
                    log.warning("cron.tick_failed", error=str(exc), kind=type(exc).__name__)
                self._failing = str(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)
        log.info("cron.stopped")

    async def tick(self) -> list[str]:
        """Look at every schedule once; the run ids started by this call."""
        defs = await self.definitions()
        started: list[str] = []
        for sched in schedules_of(defs):
            try:
                started += await self.tick_schedule(defs, sched, self.clock())
            except Unavailable:
                raise  # NATS away: the other schedules would fail alike
            except Exception as exc:  # noqa: BLE001 - one schedule's trouble never stops the rest
                log.error("cron.schedule_failed", schedule=sched.key, error=str(exc))
        return started

    async def definitions(self) -> Definitions:
        if self._defs is None or time.monotonic() - self._defs_at >= self.refresh:
            self._defs = await self.store.load()
            self._defs_at = time.monotonic()
        return self._defs

    async def tick_schedule(
        self, defs: Definitions, sched: CronSchedule, now: dt.datetime
    ) -> list[str]:
        mark, revision = await self.marks.get(sched.key)
        ended, missing = await self.claim_status(mark)
        step = plan_tick(sched, mark, now, ended=ended, missing=missing)
        if step.changed:
            try:
                revision = await self.marks.put(sched.key, step.mark, revision)
            except Conflict:
                return []  # another orchestrator's loop decided first: look again next tick
        if step.held:
            log.debug("cron.held", schedule=sched.key, slots=step.held, open=len(step.mark.open))
        if step.skipped:
            log.info("cron.skipped", schedule=sched.key, slots=step.skipped)
        started: list[str] = []
        failed: set[str] = set()
        for claim in (*step.restart, *step.claimed):
            outcome = await self.start(defs, sched, claim)
            if outcome == "started":
                started.append(claim.run_id)
            elif outcome == "invalid":
                failed.add(claim.run_id)
        if failed:
            await self.drop_claims(sched, step.mark, revision, failed)
        return started

    async def claim_status(self, mark: ScheduleMark | None) -> tuple[set[str], set[str]]:
        """Of the mark's open claims: the run ids whose runs ended, and those with no run."""
        ended: set[str] = set()
        missing: set[str] = set()
        for claim in mark.open if mark else ():
            last = await self.events.last_event(claim.run_id)
            if last is not None:
                if isinstance(last[1], TERMINAL):
                    ended.add(claim.run_id)
            elif await self.events.first_seq(claim.run_id) is None:
                missing.add(claim.run_id)
        return ended, missing

    async def start(self, defs: Definitions, sched: CronSchedule, claim: Claim) -> str:
        """Start a claimed slot's run: "started", "exists" (someone did), "invalid" (cannot be
        planned with today's definitions) or "failed" (try again next tick)."""
        request = ScheduleRequest(
            kind="dag" if sched.kind == "dag" else "outcome",
            target=sched.id,
            context=sched.context,
            params=sched.params,
            run_id=claim.run_id,
            trigger="cron",
            logical_time=claim.slot,  # a caught-up run's ${DATE} is its slot's
        )
        try:
            await schedule(self.events, defs, request, env_policy=self.env_policy)
        except RunExists:
            return "exists"
        except (Invalid, NotFound) as exc:
            log.error("cron.unplannable", schedule=sched.key, run_id=claim.run_id, error=str(exc))
            return "invalid"
        except Unavailable as exc:
            log.warning(
                "cron.start_failed", schedule=sched.key, run_id=claim.run_id, error=str(exc)
            )
            return "failed"
        log.info("cron.fired", schedule=sched.key, slot=claim.slot.isoformat(), run_id=claim.run_id)
        return "started"

    async def drop_claims(
        self, sched: CronSchedule, mark: ScheduleMark, revision: int, run_ids: set[str]
    ) -> None:
        """Forget claims whose runs can never start, so they do not hold `max_active_runs`."""
        kept = tuple(c for c in mark.open if c.run_id not in run_ids)
        with contextlib.suppress(Conflict):  # (next tick tries again)
            await self.marks.put(sched.key, ScheduleMark(last=mark.last, open=kept), revision)


class ScheduleInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What `cyclonetix schedules` (and the API) shows of one schedule."""

    owner: str  # `dag.<id>` or `task.<id>`
    kind: str
    id: str
    cron: str
    timezone: str
    catchup: bool
    max_active_runs: int
    next: list[dt.datetime]  # the next fire instants, UTC
    last_slot: dt.datetime | None  # the last slot considered (None: never looked at yet)
    last_run: str | None  # the newest run this schedule started, when one is known
    last_status: str | None  # its status (scheduled, running, succeeded, ...)
    open: list[str]  # claimed runs not known to have ended


async def describe(
    events: EventLog, defs: Definitions, marks: ScheduleMarks, now: dt.datetime, count: int
) -> list[ScheduleInfo]:
    """Every schedule with its next `count` fire times and its newest run."""
    out: list[ScheduleInfo] = []
    for sched in schedules_of(defs):
        mark, _ = await marks.get(sched.key)
        last_run: str | None = None
        status: str | None = None
        for run_id in last_run_candidates(sched, mark):
            try:
                state = await load_run(events, run_id)
            except NotFound:
                continue
            last_run, status = run_id, state.status
            break
        out.append(
            ScheduleInfo(
                owner=sched.key,
                kind=sched.kind,
                id=sched.id,
                cron=sched.cron,
                timezone=sched.timezone,
                catchup=sched.catchup,
                max_active_runs=sched.max_active_runs,
                next=sched.next_fires(now, count),
                last_slot=mark.last if mark else None,
                last_run=last_run,
                last_status=status,
                open=[c.run_id for c in mark.open] if mark else [],
            )
        )
    return out
