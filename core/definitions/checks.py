"""Rules across definition files: unknown references, bad schedules, cycles, DAG rules."""

from __future__ import annotations

import re
import urllib.parse
import zoneinfo
from typing import TYPE_CHECKING

from core.cron import parse_cron
from core.definitions.messages import DefinitionError, suggest
from core.definitions.model import (
    NOTIFY_OUTCOMES,
    PARAM_KEY_PATTERN,
    DagDef,
    DagTask,
    Definitions,
    NotifyDef,
    Scalar,
    Schedule,
    TaskDef,
    env_value,
    split_dependency,
    valid_dependency,
)
from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def check_definitions(
    defs: Definitions, *, env_policy: EnvPolicy = DEFAULT_ENV_POLICY
) -> list[DefinitionError]:
    """Every cross-file problem at once: unknown references, bad schedules, cycles, DAG rules,
    and parameters or variables `env_policy` refuses (a denied name, a NUL byte, too large)."""
    errors: list[DefinitionError] = []
    _check_tasks(defs, errors)
    for dag in defs.dags.values():
        _check_dag(defs, dag, errors)
    _check_contexts(defs, errors)
    _check_environment(defs, env_policy, errors)
    return by_file(errors)


def _check_environment(defs: Definitions, policy: EnvPolicy, errors: list[DefinitionError]) -> None:
    """Every value that becomes a command's environment variable, against the policy."""

    def check(file: str, key: str, values: Mapping[str, Scalar]) -> None:
        for name, value in values.items():
            variable = name.rpartition(".")[2]  # (schedule params: KEY or TASK.KEY)
            problem = policy.problem(variable, env_value(value))
            if problem is not None:
                errors.append(DefinitionError(file, f"{key}.{name}", problem))

    for task_id, task in defs.tasks.items():
        file = defs.source("tasks", task_id)
        check(file, "parameters", task.parameters)
        if isinstance(task.schedule, Schedule):
            check(file, "schedule.params", task.schedule.params)
    for dag_id, dag in defs.dags.items():
        file = defs.source("dags", dag_id)
        for i, entry in enumerate(dag.tasks):
            check(file, f"tasks[{i}].parameters", entry.parameters)
        if isinstance(dag.schedule, Schedule):
            check(file, "schedule.params", dag.schedule.params)
    for context_id, context in defs.contexts.items():
        check(defs.source("contexts", context_id), "variables", context.variables)
    for set_id, parameter_set in defs.parameter_sets.items():
        check(defs.source("parameter_sets", set_id), "parameters", parameter_set.parameters)


def by_file(errors: list[DefinitionError]) -> list[DefinitionError]:
    # Stable: errors of one file stay in the order they were found.
    return sorted(errors, key=lambda e: e.file)


def _known(defs: Definitions, folder: str, id: str) -> bool:
    """Defined, or defined in a file that failed to load (already reported there)."""
    return f"{folder}/{id}" in defs.sources or id in getattr(defs, folder)


def _check_tasks(defs: Definitions, errors: list[DefinitionError]) -> None:
    tasks = defs.tasks
    # Edges for cycle detection: task -> the tasks it depends on (set qualifiers dropped).
    edges: dict[str, Sequence[str]] = {}
    for task_id, task in tasks.items():
        deps = task.dependencies
        # Fast path, nearly every task of a valid set: plain ids of known tasks, no repeats.
        if all(dep in tasks for dep in deps) and len(set(deps)) == len(deps):
            edges[task_id] = deps
        else:
            edges[task_id] = _check_dependencies(defs, task, errors)
        if task.parameter_sets:
            for i, set_id in enumerate(task.parameter_sets):
                if not _known(defs, "parameter_sets", set_id):
                    errors.append(
                        DefinitionError(
                            defs.source("tasks", task_id),
                            f"parameter_sets[{i}]",
                            f"unknown parameter set {set_id!r}"
                            + suggest(set_id, defs.parameter_sets),
                        )
                    )
        if task.schedule is not None:
            _check_schedule(defs, task.schedule, defs.source("tasks", task_id), errors)
        _check_notify(task.notify, defs.source("tasks", task_id), errors)
    for cycle in find_cycles(edges):
        closing = tasks[cycle[-2]]
        index = next(
            i for i, dep in enumerate(closing.dependencies) if split_dependency(dep)[0] == cycle[0]
        )
        errors.append(
            DefinitionError(
                defs.source("tasks", closing.id),
                f"dependencies[{index}]",
                "dependency cycle: " + " -> ".join(cycle),
            )
        )


def _check_dependencies(
    defs: Definitions, task: TaskDef, errors: list[DefinitionError]
) -> list[str]:
    """Report bad, repeated and unknown dependencies; the known dependency tasks."""
    file = defs.source("tasks", task.id)
    found: list[str] = []
    seen: set[str] = set()
    for i, dep in enumerate(task.dependencies):
        key = f"dependencies[{i}]"
        if not valid_dependency(dep):
            errors.append(
                DefinitionError(
                    file, key, f"invalid dependency {dep!r}: expected TASK or TASK:PARAMETER_SET"
                )
            )
            continue
        if dep in seen:
            errors.append(DefinitionError(file, key, f"{dep!r} is listed twice"))
            continue
        seen.add(dep)
        dep_task, dep_set = split_dependency(dep)
        if dep_task in defs.tasks:
            found.append(dep_task)
        elif not _known(defs, "tasks", dep_task):
            errors.append(
                DefinitionError(
                    file, key, f"unknown task {dep_task!r}" + suggest(dep_task, defs.tasks)
                )
            )
        if dep_set is not None and not _known(defs, "parameter_sets", dep_set):
            errors.append(
                DefinitionError(
                    file,
                    key,
                    f"unknown parameter set {dep_set!r} in {dep!r}"
                    + suggest(dep_set, defs.parameter_sets),
                )
            )
    return found


def _check_dag(defs: Definitions, dag: DagDef, errors: list[DefinitionError]) -> None:
    file = defs.source("dags", dag.id)
    _check_notify(dag.notify, file, errors)
    _check_context(defs, dag.context, file, "context", errors)
    if dag.schedule is not None:
        _check_schedule(defs, dag.schedule, file, errors)
        if (
            not isinstance(dag.schedule, str)
            and dag.schedule.max_active_runs is not None
            and dag.max_active_runs is not None
        ):
            errors.append(
                DefinitionError(
                    file,
                    "schedule.max_active_runs",
                    "max_active_runs is also set on the DAG: set it in one place",
                )
            )
    position: dict[str, int] = {}
    for i, entry in enumerate(dag.tasks):
        if entry.id in position:
            errors.append(
                DefinitionError(
                    file,
                    f"tasks[{i}].id",
                    f"task {entry.id!r} appears twice in this DAG "
                    f"(also tasks[{position[entry.id]}])",
                )
            )
        else:
            position[entry.id] = i
    edges: dict[str, list[str]] = {}
    dag_defined: set[str] = set()  # entries whose edges come from the DAG file, not a task file
    for i, entry in enumerate(dag.tasks):
        if position[entry.id] != i:
            continue
        where = f"tasks[{i}]"
        task = defs.tasks.get(entry.id)
        if task is None and entry.command is None:
            if not _known(defs, "tasks", entry.id):
                errors.append(
                    DefinitionError(
                        file,
                        where,
                        f"{entry.id!r} is not a task definition and has no command "
                        "(give a command to define it inline)" + suggest(entry.id, defs.tasks),
                    )
                )
            continue
        if entry.command is not None and not entry.command.strip():
            errors.append(DefinitionError(file, f"{where}.command", "empty command"))
        for k, set_id in enumerate(entry.parameter_sets or ()):
            if not _known(defs, "parameter_sets", set_id):
                errors.append(
                    DefinitionError(
                        file,
                        f"{where}.parameter_sets[{k}]",
                        f"unknown parameter set {set_id!r}" + suggest(set_id, defs.parameter_sets),
                    )
                )
        from_entry = entry.dependencies is not None or task is None
        if from_entry:
            dag_defined.add(entry.id)
        dependencies = dag_dependencies(entry, task)
        entry_edges: list[str] = []
        for k, dep in enumerate(dependencies):
            dep_task, dep_set = split_dependency(dep)
            if not valid_dependency(dep):
                if from_entry:
                    errors.append(
                        DefinitionError(
                            file,
                            f"{where}.dependencies[{k}]",
                            f"invalid dependency {dep!r}: expected TASK or TASK:PARAMETER_SET",
                        )
                    )
                continue
            if dep_task not in position:
                if not from_entry and not _known(defs, "tasks", dep_task):
                    continue  # an unknown task in a task file is reported on that file
                if from_entry:
                    errors.append(
                        DefinitionError(
                            file,
                            f"{where}.dependencies[{k}]",
                            f"{dep_task!r} is not a task of this DAG" + suggest(dep_task, position),
                        )
                    )
                else:
                    errors.append(
                        DefinitionError(
                            file,
                            where,
                            f"{entry.id!r} depends on {dep_task!r} (in "
                            f"{defs.source('tasks', entry.id)}), which is not a task of this DAG: "
                            "add it to the DAG or override the dependencies here",
                        )
                    )
                continue
            entry_edges.append(dep_task)
            if from_entry and dep_set is not None and not _known(defs, "parameter_sets", dep_set):
                errors.append(
                    DefinitionError(
                        file,
                        f"{where}.dependencies[{k}]",
                        f"unknown parameter set {dep_set!r} in {dep!r}",
                    )
                )
        edges[entry.id] = entry_edges
    for cycle in find_cycles(edges):
        # A cycle made only of task-file edges is already reported on the task files.
        if not dag_defined.intersection(cycle):
            continue
        # Point at an edge written in this DAG file: that is where the cycle can be fixed.
        step = next(i for i, node in enumerate(cycle) if node in dag_defined)
        node, following = cycle[step], cycle[step + 1]
        entry = dag.tasks[position[node]]
        index = next(
            k
            for k, dep in enumerate(dag_dependencies(entry, defs.tasks.get(node)))
            if split_dependency(dep)[0] == following
        )
        errors.append(
            DefinitionError(
                file,
                f"tasks[{position[node]}].dependencies[{index}]",
                "dependency cycle: " + " -> ".join(cycle),
            )
        )


def dag_dependencies(entry: DagTask, task: TaskDef | None) -> tuple[str, ...]:
    """An entry's dependencies: its own if given, else the task file's."""
    if entry.dependencies is not None:
        return entry.dependencies
    return task.dependencies if task is not None else ()


def _check_contexts(defs: Definitions, errors: list[DefinitionError]) -> None:
    contexts = defs.contexts
    edges: dict[str, list[str]] = {}
    for context_id, context in contexts.items():
        parent = context.extends
        if parent is None:
            continue
        if parent in contexts:
            edges[context_id] = [parent]
        elif not _known(defs, "contexts", parent):
            errors.append(
                DefinitionError(
                    defs.source("contexts", context_id),
                    "extends",
                    f"unknown context {parent!r}" + suggest(parent, contexts),
                )
            )
    for cycle in find_cycles(edges):
        errors.append(
            DefinitionError(
                defs.source("contexts", cycle[-2]),
                "extends",
                "inheritance cycle: " + " -> ".join(cycle),
            )
        )


_PARAM_KEY = re.compile(PARAM_KEY_PATTERN)


def _check_schedule(
    defs: Definitions, schedule: Schedule | str, file: str, errors: list[DefinitionError]
) -> None:
    if isinstance(schedule, str):
        _check_cron(schedule, file, "schedule", errors)
        return
    _check_cron(schedule.cron, file, "schedule.cron", errors)
    if not valid_timezone(schedule.timezone):
        errors.append(
            DefinitionError(
                file,
                "schedule.timezone",
                f"unknown timezone {schedule.timezone!r} (use an IANA name such as "
                "'UTC' or 'Europe/London')",
            )
        )
    for key in schedule.params:
        if not _PARAM_KEY.match(key):
            errors.append(
                DefinitionError(
                    file,
                    f"schedule.params.{key}",
                    f"invalid parameter name {key!r}: expected KEY or TASK.KEY "
                    "(letters, digits and '_'; a task id may also hold '-')",
                )
            )
    _check_context(defs, schedule.context, file, "schedule.context", errors)


def _check_context(
    defs: Definitions, context: str | None, file: str, key: str, errors: list[DefinitionError]
) -> None:
    if context is not None and not _known(defs, "contexts", context):
        errors.append(
            DefinitionError(
                file, key, f"unknown context {context!r}" + suggest(context, defs.contexts)
            )
        )


def _check_cron(text: str, file: str, key: str, errors: list[DefinitionError]) -> None:
    try:
        parse_cron(text)
    except ValueError as exc:
        errors.append(DefinitionError(file, key, f"invalid cron {text!r}: {exc}"))


def valid_timezone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def find_cycles(edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Cycles among nodes, one per back edge found by a depth-first search.

    `edges[a]` lists what a depends on. Each cycle is a path `[x, ..., x]` (`x -> y`: x depends
    on y) rotated to start at its smallest node, so the text does not depend on iteration order.
    Iterative (thousands of nodes must not hit the recursion limit) and O(nodes + edges).
    """
    cycles: list[list[str]] = []
    reported: set[tuple[str, ...]] = set()
    done: set[str] = set()
    for root in edges:
        if root in done:
            continue
        path = [root]
        on_path = {root: 0}
        pending = [iter(edges.get(root, ()))]
        while pending:
            for dep in pending[-1]:
                if dep in done:
                    continue
                at = on_path.get(dep)
                if at is None:
                    on_path[dep] = len(path)
                    path.append(dep)
                    pending.append(iter(edges.get(dep, ())))
                    break
                loop = path[at:]
                start = loop.index(min(loop))
                rotated = (*loop[start:], *loop[:start])
                if rotated not in reported:
                    reported.add(rotated)
                    cycles.append([*rotated, rotated[0]])
            else:
                pending.pop()
                node = path.pop()
                del on_path[node]
                done.add(node)
    return cycles


def _check_notify(
    notify: Sequence[NotifyDef] | None, file: str, errors: list[DefinitionError]
) -> None:
    """Completion webhooks: an absolute http(s) url with a host (msgspec checked the rest)."""
    for i, hook in enumerate(notify or ()):
        problem = url_problem(hook.url)
        if problem:
            errors.append(DefinitionError(file, f"notify[{i}].url", problem))
        for k, outcome in enumerate(hook.on):
            if outcome not in NOTIFY_OUTCOMES:
                errors.append(
                    DefinitionError(
                        file,
                        f"notify[{i}].on[{k}]",
                        f"unknown outcome {outcome!r} (expected {', '.join(NOTIFY_OUTCOMES)})"
                        + suggest(outcome, NOTIFY_OUTCOMES),
                    )
                )
            elif outcome in hook.on[:k]:
                errors.append(
                    DefinitionError(file, f"notify[{i}].on[{k}]", f"{outcome!r} is listed twice")
                )


def url_problem(url: str) -> str | None:
    """Why `url` cannot receive a webhook, or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        return f"invalid url {url!r}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// url, got {url!r}"
    if not parts.hostname or any(c.isspace() for c in url):
        return f"invalid url {url!r}: expected http(s)://HOST[:PORT]/PATH"
    return None
