"""The in-memory read model: the default of `cyclonetix dev`, held by the process serving the UI.

Its rows live in a `MemoryTables`; a `MemoryReadModel` is one "connection" to them with its own
cache of open runs, exactly as a Redis or Postgres store would have (so a second instance over
the same tables behaves like a projector restarted against a store that survived it).

Writes stage every change of a batch first and commit them after, with plain dict operations
that cannot fail half-way: a batch is applied whole or not at all. Per event the work is one core
fold and a few dict writes; lists scan the runs newest first and stop at the page's end.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence

from core.events import decode
from core.run import RunStatus
from core.snapshots import TaskNode
from projections import rows
from projections.protocol import Entry, all_statuses, matches, parse_cursor
from projections.views import (
    ALL_RUNS,
    TERMINAL_RUN_STATUSES,
    AttemptRow,
    EventRow,
    Page,
    RunDetail,
    RunFilter,
    RunRow,
    TaskRunRow,
)


class MemoryTables:
    """Every row of one in-memory read model and its checkpoint."""

    def __init__(self) -> None:
        self.applied = asyncio.Condition()
        self.clear()

    def clear(self) -> None:
        self.checkpoint = 0
        self.runs: dict[str, RunRow] = {}
        self.order: list[int] = []  # scheduled_seq of every run, ascending
        self.run_at: dict[int, str] = {}  # scheduled_seq -> run id
        self.tasks: dict[str, dict[str, TaskRunRow]] = {}  # run -> node id -> row (graph order)
        self.graph: dict[str, list[TaskNode]] = {}
        self.definitions: dict[str, set[str]] = {}  # run -> task definitions in its graph
        # run, task -> its attempts by number: a tuple, not a dict, for the cyclic collector's
        # sake (a tuple of rows is untracked; a dict per task made replay a fifth slower)
        self.attempts: dict[tuple[str, str], tuple[AttemptRow, ...]] = {}
        self.events: dict[str, list[EventRow]] = {}
        self.status_counts = all_statuses()

    def commit(self, changes: Sequence[rows.Changes], checkpoint: int) -> None:
        events, tasks_of, attempts = self.events, self.tasks, self.attempts
        for c in changes:
            if c.event is not None:
                events.setdefault(c.event.run_id, []).append(c.event)
            if c.graph and c.of is not None:
                run_id = c.of.state.run_id
                tasks = tasks_of.setdefault(run_id, {})
                for node in c.graph:
                    tasks[node.id] = rows.pending_row(run_id, node, c.seq)
                self.graph.setdefault(run_id, []).extend(c.graph)
                self.definitions.setdefault(run_id, set()).update(n.task_id for n in c.graph)
            for task in c.tasks:
                tasks_of.setdefault(task.run_id, {})[task.task_id] = task
            for a in c.attempts:
                key = (a.run_id, a.task_id)
                kept = attempts.get(key, ())
                if kept and kept[-1].attempt == a.attempt:
                    attempts[key] = (*kept[:-1], a)
                elif not kept or kept[-1].attempt < a.attempt:
                    attempts[key] = (*kept, a)
                else:  # (an earlier attempt's row: never written after a later one's, but kept)
                    by_number = {r.attempt: r for r in kept} | {a.attempt: a}
                    attempts[key] = tuple(by_number[n] for n in sorted(by_number))
        for row in rows.run_rows(changes):
            self._put_run(row)
        self.checkpoint = checkpoint

    def _put_run(self, row: RunRow) -> None:
        old = self.runs.get(row.run_id)
        if old is None:
            self.order.append(row.scheduled_seq)
            self.run_at[row.scheduled_seq] = row.run_id
        else:
            self.status_counts[old.status] -= 1
        self.status_counts[row.status] += 1
        self.runs[row.run_id] = row


class MemoryReadModel:
    """`projections.protocol.ReadModel` in this process's memory."""

    def __init__(self, tables: MemoryTables | None = None) -> None:
        self.tables = tables if tables is not None else MemoryTables()
        self._open: dict[str, rows.OpenRun] = {}  # cache of open runs' projection state

    # -- writing ---------------------------------------------------------------------------

    async def apply_batch(self, entries: Sequence[Entry]) -> int:
        t = self.tables
        last = t.checkpoint
        staged: list[rows.Changes] = []
        closed: set[str] = set()

        def lookup(run_id: str) -> rows.OpenRun | rows.Finished | None:
            found = self._open.get(run_id)
            if found is not None:
                return found
            if run_id in closed:
                return rows.FINISHED
            return self._load(run_id)

        try:
            for seq, event in entries:
                if seq <= last:
                    continue  # applied before: a redelivery
                changes = rows.apply(lookup, seq, event)
                if changes.opened is not None:
                    self._open[changes.opened.state.run_id] = changes.opened
                if changes.closed and event is not None:
                    self._open.pop(event.run_id, None)
                    closed.add(event.run_id)
                staged.append(changes)
                last = seq
        except BaseException:
            self._open.clear()  # folded past what is committed: rebuild from the rows
            raise
        async with t.applied:
            t.commit(staged, last)
            t.applied.notify_all()
        return last

    def _load(self, run_id: str) -> rows.OpenRun | rows.Finished | None:
        """A run missing from the cache: finished, never seen, or rebuilt from its events."""
        t = self.tables
        row = t.runs.get(run_id)
        if row is None:
            return None
        if row.status in TERMINAL_RUN_STATUSES:
            return rows.FINISHED
        found = rows.rebuild((e.seq, decode(e.body.encode())) for e in t.events[run_id])
        if isinstance(found, rows.OpenRun):
            self._open[run_id] = found
        return found

    async def checkpoint(self) -> int:
        return self.tables.checkpoint

    async def wait_for(self, seq: int, timeout: float) -> bool:
        t = self.tables
        try:
            async with asyncio.timeout(timeout), t.applied:
                await t.applied.wait_for(lambda: t.checkpoint >= seq)
        except TimeoutError:
            return False
        return True

    async def reset(self) -> None:
        self.tables.clear()
        self._open.clear()

    async def close(self) -> None:
        self._open.clear()

    # -- reading ---------------------------------------------------------------------------

    async def list_runs(
        self, filter: RunFilter = ALL_RUNS, limit: int = 50, cursor: str | None = None
    ) -> Page[RunRow]:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        t = self.tables
        before = parse_cursor(cursor)
        end = len(t.order) if before is None else bisect.bisect_left(t.order, before)
        found: list[RunRow] = []
        for i in range(end - 1, -1, -1):
            row = t.runs[t.run_at[t.order[i]]]
            if (filter.status is None or row.status == filter.status) and self._matches(
                row, filter
            ):
                found.append(row)
                if len(found) > limit:
                    break
        more = len(found) > limit
        items = tuple(found[:limit])
        return Page(items=items, next_cursor=str(items[-1].scheduled_seq) if more else None)

    async def count_runs(self, filter: RunFilter = ALL_RUNS) -> dict[RunStatus, int]:
        t = self.tables
        if self._unfiltered(filter):
            return dict(t.status_counts)
        counts = all_statuses()
        for row in t.runs.values():
            if self._matches(row, filter):
                counts[row.status] += 1
        return counts

    async def get_run(self, run_id: str) -> RunDetail | None:
        t = self.tables
        row = t.runs.get(run_id)
        if row is None:
            return None
        return RunDetail(
            run=row,
            tasks=tuple(t.tasks.get(run_id, {}).values()),
            graph=tuple(t.graph.get(run_id, ())),
            as_of_seq=t.checkpoint,
        )

    async def task_attempts(self, run_id: str, task_id: str) -> tuple[AttemptRow, ...]:
        return self.tables.attempts.get((run_id, task_id), ())

    async def recent_events(
        self, run_id: str, after_seq: int = 0, limit: int = 100
    ) -> tuple[EventRow, ...]:
        events = self.tables.events.get(run_id, [])
        start = bisect.bisect_right(events, after_seq, key=lambda e: e.seq)
        return tuple(events[start : start + limit])

    def _matches(self, row: RunRow, f: RunFilter) -> bool:
        return matches(row, f, self.tables.definitions.get(row.run_id, set()))

    @staticmethod
    def _unfiltered(f: RunFilter) -> bool:
        return f == RunFilter(status=f.status)
