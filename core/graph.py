"""The execution graph of one run: an immutable snapshot of resolved task specs.

A run never looks at definitions again after it is scheduled (DESIGN invariant 5): everything a
task needs to run is copied into its `TaskNode` when the graph is assembled.
"""

from __future__ import annotations

import msgspec

from core.definitions import NO_RETRIES, RetryPolicy


class TaskNode(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One task of a run, fully resolved.

    `id` is the node key inside the run: the task id, or `task_id:parameter_set` when the same
    task runs with a parameter set (the same task with two sets is two nodes).
    """

    id: str
    task_id: str
    command: str
    name: str = ""
    queue: str = "default"
    dependencies: tuple[str, ...] = ()  # node ids
    parameters: dict[str, str] = {}  # resolved and stringified; exported as environment
    retries: RetryPolicy = NO_RETRIES
    timeout_seconds: float | None = None
    evaluation_point: bool = False


class GraphError(Exception):
    """A graph could not be assembled; the message is one line naming what and where."""


def topological_order(nodes: tuple[TaskNode, ...] | list[TaskNode]) -> list[TaskNode]:
    """Nodes ordered so that every node comes after its dependencies (stable for ties).

    Raises GraphError naming the cycle as `a -> b -> a` when there is one.
    """
    by_id = {n.id: n for n in nodes}
    order: list[TaskNode] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in by_id:
        if state.get(root) == 2:
            continue
        # Iterative DFS: graphs of thousands of nodes must not hit the recursion limit.
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node_id, i = stack.pop()
            if i == 0:
                if state.get(node_id) == 2:
                    continue
                state[node_id] = 1
                path.append(node_id)
            deps = by_id[node_id].dependencies
            if i < len(deps):
                stack.append((node_id, i + 1))
                dep = deps[i]
                if dep not in by_id:
                    raise GraphError(f"task {node_id!r} depends on unknown task {dep!r}")
                mark = state.get(dep)
                if mark == 1:
                    cycle = [*path[path.index(dep) :], dep]
                    raise GraphError("dependency cycle: " + " -> ".join(cycle))
                if mark is None:
                    stack.append((dep, 0))
            else:
                state[node_id] = 2
                path.pop()
                order.append(by_id[node_id])
    return order
