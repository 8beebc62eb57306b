"""Small builders for state-machine tests: nodes, a scheduled run, agent results."""

from __future__ import annotations

import datetime as dt

from core.events import (
    AnyEvent,
    EvaluationResult,
    RunScheduled,
    TaskFailed,
    TaskQueued,
    TaskStarted,
    TaskSucceeded,
    each_queued,
)
from core.graph import TaskNode
from core.run import RunState, advance, fold
from core.snapshots import RetrySpec

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def node(
    node_id: str,
    *deps: str,
    queue: str = "default",
    retries: int = 0,
    timeout: float | None = None,
    evaluation_point: bool = False,
) -> TaskNode:
    return TaskNode(
        id=node_id,
        task_id=node_id,
        command=f"echo {node_id}",
        queue=queue,
        dependencies=deps,
        retries=RetrySpec(count=retries, delay_seconds=10, backoff=2, max_delay_seconds=15),
        timeout_seconds=timeout,
        evaluation_point=evaluation_point,
    )


DIAMOND = (node("a"), node("b", "a"), node("c", "a"), node("d", "b", "c"))


def scheduled(
    *nodes: TaskNode, run_id: str = "run-1", context: dict[str, str] | None = None
) -> RunScheduled:
    return RunScheduled(
        run_id=run_id,
        ts=T0,
        kind="outcome",
        target=nodes[-1].id,
        name=nodes[-1].id,
        graph=nodes,
        context=context or {},
    )


def start(*nodes: TaskNode, run_id: str = "run-1") -> tuple[RunState, list[AnyEvent]]:
    state = fold(None, scheduled(*nodes, run_id=run_id))
    assert state is not None
    return state, advance(state, T0)


def queued_ids(events: list[AnyEvent]) -> list[str]:
    return [q.task_id for q in queued(events)]


def queued(events: list[AnyEvent]) -> list[TaskQueued]:
    """The attempts `events` queue, one TaskQueued each."""
    return [q for e in events for q in each_queued(e)]


def started(q: TaskQueued, *, delivery: int = 1, agent: str = "agent-1") -> TaskStarted:
    return TaskStarted(
        run_id=q.run_id,
        ts=q.ts,
        task_id=q.task_id,
        attempt=q.attempt,
        agent_id=agent,
        delivery=delivery,
    )


def succeeded(
    run_id: str,
    task_id: str,
    attempt: int = 1,
    *,
    ts: dt.datetime = T0,
    evaluation: EvaluationResult | None = None,
) -> TaskSucceeded:
    return TaskSucceeded(
        run_id=run_id, ts=ts, task_id=task_id, attempt=attempt, evaluation=evaluation
    )


def failed(run_id: str, task_id: str, attempt: int = 1, *, ts: dt.datetime = T0) -> TaskFailed:
    return TaskFailed(run_id=run_id, ts=ts, task_id=task_id, attempt=attempt, exit_code=1)
