"""What a rerun runs: the graph of a new run, made from an earlier run's folded state.

A rerun is a NEW run linked to the old one (`RunScheduled.rerun_of` names it), never new attempts
in the old run. The old run's history stays as it was: an immutable record of what happened,
with its own status and timeline, which a later rerun must not rewrite. New attempts in the same
run would re-open a finished run, and the design forbids that: a run id is used once (a new run
is appended only to an empty subject) and nothing follows a run's terminal event (`fold` ignores
anything after it, so every reader would disagree about the run). The new run has its own id,
status and timeline, and the link lets a page or the API go from one to the other.

The new run repeats the earlier run's own graph snapshot — the nodes of its tasks, with those
that evaluation points added — not today's definitions, and carries over the earlier run's
context (with what evaluation points added to it). Three kinds:

- the whole run (no option): every task again;
- `from_task`: that task and everything downstream of it; their dependencies outside that set
  are dropped (they count as done, as they were in the earlier run);
- `from_failure`: every task that did not succeed (failed, skipped, cancelled, or never ran);
  dependencies on the tasks that succeeded are dropped: their results — the run's context,
  which the rerun carries over, and whatever they left outside — are reused, not recomputed.

Pure, like the rest of `core`: the command layer (`services.commands.rerun`) reads the history,
folds it and appends the new run's RunScheduled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from core.run import SUCCEEDED, RunState
from core.snapshots import TaskNode

__all__ = ["UnknownTask", "downstream", "rerun_graph"]


class UnknownTask(ValueError):
    """`from_task` names no task of the run (the command layer's NotFound)."""


def rerun_graph(
    state: RunState, *, from_task: str | None = None, from_failure: bool = False
) -> tuple[TaskNode, ...]:
    """The graph of a rerun of `state`'s run, in topological order (see the module docstring).

    Raises ValueError with one line: `UnknownTask` for a `from_task` the run does not have, a
    plain ValueError for both options at once or a `from_failure` of a run whose tasks all
    succeeded (nothing to rerun).
    """
    nodes = {task_id: task.node for task_id, task in state.tasks.items()}
    if from_task is not None and from_failure:
        raise ValueError(
            "rerun from a task or from the failure, not both: give at most one of them"
        )
    if from_task is not None:
        if from_task not in nodes:
            raise UnknownTask(
                f"run {state.run_id!r} has no task {from_task!r} (its tasks: {_some(nodes)})"
            )
        keep = downstream(nodes.values(), from_task)
    elif from_failure:
        keep = {task_id for task_id, task in state.tasks.items() if task.status != SUCCEEDED}
        if not keep:
            raise ValueError(
                f"run {state.run_id!r} has nothing to rerun from failure: "
                f"all its {len(nodes)} tasks succeeded"
            )
    else:
        keep = set(nodes)
    return _topological(nodes, keep)


def downstream(nodes: Iterable[TaskNode], task_id: str) -> set[str]:
    """`task_id` and every node that depends on it, directly or through others."""
    dependents: dict[str, list[str]] = {}
    for node in nodes:
        for dep in node.dependencies:
            dependents.setdefault(dep, []).append(node.id)
    keep = {task_id}
    stack = [task_id]
    while stack:
        for dependent in dependents.get(stack.pop(), ()):
            if dependent not in keep:
                keep.add(dependent)
                stack.append(dependent)
    return keep


def _topological(nodes: Mapping[str, TaskNode], keep: set[str]) -> tuple[TaskNode, ...]:
    """The kept nodes, each after its kept dependencies, otherwise in the run's order (already
    topological in practice: this only guarantees it); dependencies not kept are dropped."""
    out: list[TaskNode] = []
    placed: set[str] = set()
    for root in nodes:
        if root not in keep or root in placed:
            continue
        # Iterative depth-first post-order: a long chain must not hit the recursion limit.
        visiting = {root}
        stack: list[tuple[str, list[str]]] = [(root, _kept_deps(nodes[root], keep))]
        while stack:
            node_id, deps = stack[-1]
            while deps and (deps[-1] in placed or deps[-1] in visiting):
                deps.pop()  # (a node being visited again would be a cycle: snapshots have none)
            if deps:
                dep = deps.pop()
                visiting.add(dep)
                stack.append((dep, _kept_deps(nodes[dep], keep)))
                continue
            stack.pop()
            visiting.discard(node_id)
            placed.add(node_id)
            node = nodes[node_id]
            kept = tuple(d for d in node.dependencies if d in keep)
            if kept != node.dependencies:
                node = msgspec.structs.replace(node, dependencies=kept)
            out.append(node)
    return tuple(out)


def _kept_deps(node: TaskNode, keep: set[str]) -> list[str]:
    # Reversed, so popping from the end visits them in their listed order.
    return [d for d in reversed(node.dependencies) if d in keep]


def _some(nodes: Mapping[str, TaskNode], limit: int = 10) -> str:
    names = sorted(nodes)
    listed = ", ".join(names[:limit])
    return listed if len(names) <= limit else f"{listed}, ... {len(names) - limit} more"
