"""Whether a dispatched attempt may still start, judged from its run's newest event.

A dispatch can outlive the reason it was sent: its run was cancelled or ended while it waited
in the work queue, the attempt was cancelled before anyone took it, or it is a redelivery of an
attempt that already finished (its ack was lost) or that a newer attempt replaced. An agent
asks the log for the run's newest event (one cheap read) and does not start such an attempt.

The newest event tells only so much: `None` means "nothing says it is stale", and fold's fencing
by attempt number still ignores whatever a stale attempt that did start would report.
"""

from __future__ import annotations

from core.events import (
    TERMINAL,
    AnyEvent,
    Dispatch,
    RunCancelRequested,
    TaskCancelled,
    TaskEvent,
    TaskFailed,
    TaskLost,
    TaskSkipped,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    each_queued,
)

__all__ = ["held_elsewhere", "why_not_current"]

# Results that end an attempt: once one is stored, the attempt never runs again.
_ENDS_ATTEMPT = (TaskSucceeded, TaskFailed, TaskLost, TaskCancelled, TaskSkipped)


def why_not_current(d: Dispatch, last: AnyEvent | None) -> str | None:
    """Why attempt `d` must not start, given its run's newest stored event `last` (None when
    the run has none, or it could not be read); None when nothing says so."""
    if last is None:
        return None
    if isinstance(last, TERMINAL):
        return f"its run has ended ({type(last).__name__})"
    if isinstance(last, RunCancelRequested):
        return "its run is being cancelled"
    # (A TasksQueued says of each attempt it holds what a TaskQueued of it would.)
    for said in each_queued(last) if isinstance(last, TasksQueued) else (last,):
        if isinstance(said, TaskEvent) and said.task_id == d.task_id:
            if said.attempt > d.attempt:
                return f"attempt {d.attempt} was superseded by attempt {said.attempt}"
            if said.attempt == d.attempt and isinstance(said, _ENDS_ATTEMPT):
                return f"attempt {d.attempt} has already ended ({type(said).__name__})"
    return None


def held_elsewhere(d: Dispatch, delivery: int, agent_id: str, last: AnyEvent | None) -> str | None:
    """Why delivery `delivery` of attempt `d` must be left to another agent, given the run's
    newest event `last`; None when nothing says so.

    It is left alone when the newest event is another agent's start of the same attempt from
    the same or a later delivery: that agent holds this very message. JetStream hands a message
    out again with the same delivery count when a restarted server lost the consumer's state
    (its acknowledgements are keyed by stream sequence, so the holder still settles it). A start
    from an earlier delivery is a holder that gave the message back or died: this one runs.
    """
    if (
        isinstance(last, TaskStarted)
        and (last.task_id, last.attempt) == (d.task_id, d.attempt)
        and last.agent_id != agent_id
        and last.delivery >= delivery
    ):
        return f"agent {last.agent_id!r} runs this attempt (delivery {last.delivery})"
    return None
