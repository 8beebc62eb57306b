"""The Gantt chart of a run (`/runs/{run_id}/timeline`): one lane per agent, one bar per
attempt that started, placed in percent of the run's span so the page draws it with CSS alone.

Pure: built from the run's task rows and the attempts of its retried tasks (the only ones with
more than one attempt), so a 2,000-task run costs one read plus one per retried task.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from projections.views import AttemptRow, TaskRunRow

NO_AGENT = "(no agent)"
TICKS = 6


@dataclass(frozen=True)
class Span:
    """One attempt that started: who ran it and when."""

    task_id: str
    attempt: int
    status: str
    agent: str
    start: dt.datetime
    end: dt.datetime | None  # None: still running


@dataclass(frozen=True)
class Bar:
    span: Span
    left: float  # percent of the chart's width
    width: float
    seconds: float


@dataclass
class Lane:
    """One agent's attempts, in rows: an agent runs several at once (its concurrency), and
    overlapping attempts go to separate rows so that none hides another."""

    agent: str
    rows: list[list[Bar]] = field(default_factory=list)

    def place(self, bar: Bar) -> None:
        """Put `bar` in the first row whose last bar ended before it starts (bars come in
        order of their start)."""
        for row in self.rows:
            last = row[-1]
            if last.left + last.width <= bar.left:
                row.append(bar)
                return
        self.rows.append([bar])


@dataclass
class Timeline:
    lanes: list[Lane]
    start: dt.datetime | None
    seconds: float  # the chart's span
    ticks: list[tuple[float, str]]  # (percent, label)
    waiting: int  # attempts not started (yet), not drawn


def spans(tasks: Iterable[TaskRunRow], attempts: Iterable[AttemptRow]) -> tuple[list[Span], int]:
    """The started attempts: every attempt row given, and each task's current attempt unless
    its attempt rows were given; with the count of tasks and attempts not started."""
    out: list[Span] = []
    waiting = 0
    covered: set[str] = set()
    for a in attempts:
        covered.add(a.task_id)
        if a.started_at is None:
            waiting += 1
            continue
        out.append(
            Span(
                a.task_id,
                a.attempt,
                str(a.status),
                a.agent_id or NO_AGENT,
                a.started_at,
                a.ended_at,
            )
        )
    for t in tasks:
        if t.task_id in covered:
            continue
        if t.started_at is None:
            waiting += 1
            continue
        end = t.ended_at if t.ended_at is not None and t.ended_at >= t.started_at else None
        out.append(
            Span(t.task_id, t.attempt, str(t.status), t.agent_id or NO_AGENT, t.started_at, end)
        )
    return out, waiting


def build(found: list[Span], waiting: int, now: dt.datetime) -> Timeline:
    """Lanes by agent (bars by start), a span from the first start to the last end (now while
    an attempt runs), and evenly spaced tick labels in seconds from the start."""
    if not found:
        return Timeline([], None, 0.0, [], waiting)
    start = min(s.start for s in found)
    end = max((s.end or now) for s in found)
    total = max((end - start).total_seconds(), 0.001)
    lanes: dict[str, Lane] = {}
    for s in sorted(found, key=lambda s: (s.start, s.task_id, s.attempt)):
        begin = (s.start - start).total_seconds()
        length = max(((s.end or now) - s.start).total_seconds(), 0.0)
        lanes.setdefault(s.agent, Lane(s.agent)).place(
            Bar(
                s,
                left=100 * begin / total,
                # at least a sliver: an attempt of a few milliseconds is still visible
                width=max(100 * length / total, 0.4),
                seconds=length,
            )
        )
    ticks = [(100 * i / TICKS, f"{total * i / TICKS:.1f} s") for i in range(TICKS + 1)]
    return Timeline([lanes[k] for k in sorted(lanes)], start, total, ticks, waiting)
