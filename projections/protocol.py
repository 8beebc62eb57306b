"""The read-model port: what the projector writes and the UI, the API and the CLI query.

Every store (memory, Redis, Postgres) implements `ReadModel` and persists only what
`projections.rows.apply` returns; tests/contract/test_read_model.py is the one suite that holds
each store to it.

Not here, on purpose: agents and queue depths. They are read live from NATS (`cx_agents` and the
work consumers' info) by whoever shows them, never projected (DESIGN §4).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import msgspec

from core.events import AnyEvent, decode
from core.run import RunStatus
from projections.views import (
    ALL_RUNS,
    AttemptRow,
    EventRow,
    Page,
    RunDetail,
    RunFilter,
    RunRow,
)

log = logging.getLogger(__name__)

Entry = tuple[int, AnyEvent | None]
"""One stream sequence and its event; None for a message the projector could not read (an
event type from a newer writer, or not an event at all). A None entry changes no row but still
advances the checkpoint, so the projector never stalls on it nor sees it again."""


def decode_entry(seq: int, data: bytes) -> Entry:
    """Decode one message of `CX_EVENTS`; an unreadable one is logged with its sequence and
    becomes a skipped entry."""
    try:
        return seq, decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        log.warning("skipping event at seq %d: cannot read it (%s)", seq, exc)
        return seq, None


def all_statuses() -> dict[RunStatus, int]:
    """`count_runs`'s shape: a count per run status, every status present."""
    return dict.fromkeys(RunStatus, 0)


class ReadModel(Protocol):
    """One read-model store. Every method is safe to call concurrently with `apply_batch`.

    Writes are exactly-once in effect: a store records the last sequence it applied in the same
    atomic write as the rows, and an entry at or below that checkpoint is skipped. A projector
    resumes from `checkpoint() + 1`; redelivered entries are harmless.
    """

    async def apply_batch(self, entries: Sequence[Entry]) -> int:
        """Apply entries (in increasing sequence) atomically with the checkpoint; returns the
        checkpoint after. Any split of a stream into batches gives the same rows."""
        ...

    async def checkpoint(self) -> int:
        """The last stream sequence applied (0: none)."""
        ...

    async def wait_for(self, seq: int, timeout: float) -> bool:
        """Wait until `seq` is applied (read-your-writes after a command); False on timeout."""
        ...

    async def list_runs(
        self, filter: RunFilter = ALL_RUNS, limit: int = 50, cursor: str | None = None
    ) -> Page[RunRow]:
        """Runs matching `filter`, newest (latest scheduled) first, `limit` per page."""
        ...

    async def count_runs(self, filter: RunFilter = ALL_RUNS) -> dict[RunStatus, int]:
        """How many runs match `filter` in each status (`filter.status` is ignored)."""
        ...

    async def get_run(self, run_id: str) -> RunDetail | None:
        """One run with its task runs and graph; None for a run not (yet) projected."""
        ...

    async def task_attempts(self, run_id: str, task_id: str) -> tuple[AttemptRow, ...]:
        """The attempts of one task of a run, by attempt number."""
        ...

    async def recent_events(
        self, run_id: str, after_seq: int = 0, limit: int = 100
    ) -> tuple[EventRow, ...]:
        """A run's events with a sequence above `after_seq`, oldest first, at most `limit`
        (page on with the last row's `seq`)."""
        ...

    async def reset(self) -> None:
        """Forget every row and the checkpoint (before a full replay)."""
        ...

    async def close(self) -> None:
        """Release connections; the rows stay."""
        ...


def parse_cursor(cursor: str | None) -> int | None:
    """A `Page.next_cursor`: the `scheduled_seq` of the last run of the previous page."""
    if cursor is None:
        return None
    try:
        value = int(cursor)
    except ValueError:
        raise ValueError(f"not a cursor of this list: {cursor!r}") from None
    if value < 1:
        raise ValueError(f"not a cursor of this list: {cursor!r}")
    return value


def matches(row: RunRow, f: RunFilter, task_ids: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether `row` (whose graph holds the task definitions `task_ids`) matches `f`, status
    aside. The reference semantics of a filter; stores with indexes must agree with it."""
    return (
        (f.kind is None or row.kind == f.kind)
        and (f.target is None or row.target == f.target)
        and (f.trigger is None or row.trigger == f.trigger)
        and (f.since is None or row.scheduled_at >= f.since)
        and (f.until is None or row.scheduled_at < f.until)
        and (f.task is None or f.task in task_ids)
    )
