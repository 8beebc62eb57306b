"""How fast definitions are checked and an outcome resolved, at the size of a large installation.

`python -m bench.definitions_bench [N]` prints JSON. The graph is layered like real pipelines:
each task depends on 1-6 tasks from the three layers above it, a few tasks use parameter sets
(one through a `task:set` dependency) and a few have cron schedules. The target is in the last
layer, so its outcome pulls in most of the graph.
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
from typing import TYPE_CHECKING

from core.definitions import (
    Definitions,
    ParameterSetDef,
    TaskDef,
    check_definitions,
    parse_definitions,
)
from core.graph import outcome_graph

if TYPE_CHECKING:
    from collections.abc import Callable

# How many dependencies a task has, drawn from this list: mostly 1-2, sometimes a wide join.
FAN_IN = (1, 1, 1, 2, 2, 2, 3, 3, 4, 6)
LAYERS_BACK = 3


def build(n_tasks: int, seed: int = 7) -> Definitions:
    """A layered random DAG of `n_tasks` tasks (about sqrt(n) layers of sqrt(n) tasks)."""
    rng = random.Random(seed)
    width = max(1, round(n_tasks**0.5))
    ids = [f"task_{i:05d}" for i in range(n_tasks)]
    sets = {
        "large": ParameterSetDef(id="large", parameters={"MEMORY_MB": 8192, "THREADS": 16}),
        "common": ParameterSetDef(id="common", parameters={"REGION": "eu-west-1"}),
    }
    tasks: dict[str, TaskDef] = {}
    for i, task_id in enumerate(ids):
        layer = i // width
        deps: tuple[str, ...] = ()
        if layer:
            low, high = max(0, (layer - LAYERS_BACK) * width), layer * width
            picked = rng.sample(range(low, high), min(high - low, rng.choice(FAN_IN)))
            deps = tuple(ids[j] for j in sorted(picked))
            if rng.random() < 0.01:
                deps = (*deps[:-1], f"{deps[-1]}:large")
        tasks[task_id] = TaskDef(
            id=task_id,
            name=f"Step {i}",
            command='echo "step $STEP of layer $LAYER"',
            dependencies=deps,
            parameters={"STEP": i, "LAYER": layer, "VERBOSE": rng.random() < 0.5},
            parameter_sets=("common",) if rng.random() < 0.05 else (),
            queue="gpu" if rng.random() < 0.1 else "default",
            retries=rng.choice((0, 0, 0, 2)),
            schedule="*/15 * * * *" if rng.random() < 0.01 else None,
        )
    return Definitions(tasks=tasks, parameter_sets=sets)


def as_yaml_files(defs: Definitions) -> dict[str, str]:
    """The same definitions as YAML texts, to time parsing."""
    files: dict[str, str] = {}
    for task in defs.tasks.values():
        lines = [f"id: {task.id}", f"name: {task.name}", f"command: '{task.command}'"]
        if task.dependencies:
            lines.append("dependencies: [" + ", ".join(f"'{d}'" for d in task.dependencies) + "]")
        lines.append("parameters:")
        lines.extend(f"  {k}: {str(v).lower()}" for k, v in task.parameters.items())
        if task.parameter_sets:
            lines.append(f"parameter_sets: [{', '.join(task.parameter_sets)}]")
        lines.append(f"queue: {task.queue}")
        if task.schedule:
            lines.append(f"schedule: '{task.schedule}'")
        files[f"tasks/{task.id}.yaml"] = "\n".join(lines) + "\n"
    for parameter_set in defs.parameter_sets.values():
        body = "".join(f"  {k}: {v}\n" for k, v in parameter_set.parameters.items())
        files[f"parameter_sets/{parameter_set.id}.yaml"] = (
            f"id: {parameter_set.id}\nparameters:\n{body}"
        )
    return files


def best_ms(action: Callable[[], object], repeat: int) -> float:
    """Best wall time of `repeat` runs, with the garbage collector paused as `timeit` does."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            action()
            best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
    return round(best * 1000, 3)


def run(n_tasks: int = 10_000, repeat: int = 7) -> dict[str, float]:
    defs = build(n_tasks)
    target = next(reversed(defs.tasks))
    errors = check_definitions(defs)
    if errors:  # the generator is wrong, not the checker: fail loudly
        raise AssertionError(f"benchmark definitions are invalid: {errors[0]}")
    outcome_nodes = len(outcome_graph(defs, target))

    def both() -> None:
        check_definitions(defs)
        outcome_graph(defs, target)

    files = as_yaml_files(defs)
    return {
        "tasks": n_tasks,
        "edges": sum(len(t.dependencies) for t in defs.tasks.values()),
        "outcome_nodes": outcome_nodes,
        "validate_ms": best_ms(lambda: check_definitions(defs), repeat),
        "resolve_ms": best_ms(lambda: outcome_graph(defs, target), repeat),
        "validate_and_resolve_ms": best_ms(both, repeat),
        "parse_ms": best_ms(lambda: parse_definitions(files), 1),
    }


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    print(json.dumps(run(size)))  # one line: `just bench` prints JSON lines
