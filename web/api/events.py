"""A run's history: its events as stored, and its task statuses as they stood at any event
(the run page's history slider)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from core.errors import NotFound
from core.events import TERMINAL, AnyEvent
from core.run import RunState, RunSummary, fold, run_summary
from projections.views import EventRow
from web.api.common import run_or_404
from web.context import UiContext

ENDED_HISTORIES = 16  # ended runs whose history is kept in memory for the slider, at most


class RunAt(msgspec.Struct, kw_only=True):
    """A run as it stood once the event at `seq` was stored (the last of its events at or
    before the asked sequence); `events` of its events had been stored then."""

    seq: int
    events: int
    summary: RunSummary


@get("/runs/{run_id:str}/events", summary="A run's events after a sequence, oldest first")
async def run_events(
    run_id: FromPath[str],
    ui: NamedDependency[UiContext],
    after_seq: Annotated[int, QueryParameter(ge=0)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> tuple[EventRow, ...]:
    """Page on with the last row's `seq` as `after_seq`."""
    await run_or_404(ui, run_id)
    return await ui.read_model.recent_events(run_id, after_seq, limit)


@get("/runs/{run_id:str}/states", summary="Task statuses of a run as they stood at a sequence")
async def run_states(
    run_id: FromPath[str],
    ui: NamedDependency[UiContext],
    at_seq: Annotated[int, QueryParameter(ge=1)],
) -> RunAt:
    """Folds the run's history from the event log up to `at_seq` (core.run.fold: the same
    fold the orchestrator keeps, so a past picture is exactly what the run was then)."""
    state: RunState | None = None
    seq = count = 0
    for event_seq, event in await _history(ui, run_id):
        if event_seq > at_seq:
            break
        state, seq, count = fold(state, event), event_seq, count + 1
    if state is None:
        raise NotFound(f"no event of run {run_id!r} at or before sequence {at_seq}")
    return RunAt(seq=seq, events=count, summary=run_summary(state))


async def _history(ui: UiContext, run_id: str) -> list[tuple[int, AnyEvent]]:
    """The run's history from the log; an ended run's is kept (it never changes again), so
    moving the slider over a big run reads its log once."""
    ended = ui.extras.setdefault("ended_histories", OrderedDict())
    history: list[tuple[int, AnyEvent]] | None = ended.get(run_id)
    if history is not None:
        ended.move_to_end(run_id)
        return history
    history = await ui.backplane.events.history(run_id)
    if history and isinstance(history[-1][1], TERMINAL):
        ended[run_id] = history
        if len(ended) > ENDED_HISTORIES:
            ended.popitem(last=False)
    return history


handlers = [run_events, run_states]
