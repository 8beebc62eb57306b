"""The dashboard's throughput: task attempts ended (succeeded or failed) per minute over the
last hour.

Counted by this web process from the live feed (`LiveFeed.listeners`) from the first page view
on, and seeded at that moment from the read model with the tasks of the runs scheduled in the
last hour (at most SEED_RUNS of them; a seeded task counts its current attempt only). So it is
exact from the first view on and a close estimate of the minutes before it; a read model query
for it would make it exact across restarts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from core.events import AnyEvent, TaskFailed, TaskSucceeded
from core.run import TaskStatus
from projections.views import RunFilter, TaskRunRow
from web.context import UiContext
from web.live import LiveFeed

WINDOW_MIN = 60
SEED_RUNS = 200
KEY = "pages.throughput"  # its place in UiContext.extras


def _minute(when: dt.datetime) -> int:
    return int(when.timestamp() // 60)


class Throughput:
    """Attempts ended per minute (minutes since the epoch -> count), the last hour kept."""

    def __init__(self, since: dt.datetime) -> None:
        self.since = since  # events at or after this are counted live, rows before it seeded
        self.minutes: dict[int, int] = {}

    def _count(self, when: dt.datetime) -> None:
        key = _minute(when)
        self.minutes[key] = self.minutes.get(key, 0) + 1

    def observe(self, _seq: int, event: AnyEvent) -> None:
        if isinstance(event, TaskSucceeded | TaskFailed) and event.ts >= self.since:
            self._count(event.ts)

    def seed(self, tasks: Iterable[TaskRunRow]) -> None:
        for t in tasks:
            ended = t.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)
            if ended and t.ended_at is not None and t.ended_at < self.since:
                self._count(t.ended_at)

    def series(self, now: dt.datetime) -> list[int]:
        """The last WINDOW_MIN minutes, oldest first, this minute last; older ones forgotten."""
        last = _minute(now)
        for key in [k for k in self.minutes if k <= last - WINDOW_MIN]:
            del self.minutes[key]
        return [self.minutes.get(m, 0) for m in range(last - WINDOW_MIN + 1, last + 1)]


async def throughput(ui: UiContext, now: dt.datetime) -> Throughput:
    """This process's counter, started (listening and seeded) on first use."""
    found = ui.extras.get(KEY)
    if isinstance(found, Throughput):
        return found
    counter = Throughput(now)
    ui.extras[KEY] = counter  # before any await: a concurrent first view finds it
    feed = ui.extras.get("live")
    if isinstance(feed, LiveFeed):
        feed.listeners.append(counter.observe)
    recent = await ui.read_model.list_runs(
        RunFilter(since=now - dt.timedelta(minutes=WINDOW_MIN)), limit=SEED_RUNS
    )
    for run in recent.items:
        detail = await ui.read_model.get_run(run.run_id)
        if detail is not None:
            counter.seed(detail.tasks)
    return counter
