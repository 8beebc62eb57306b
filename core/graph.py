"""The execution graph of one run: an immutable snapshot of resolved task specs.

A run never looks at definitions again after it is scheduled (DESIGN invariant 5): everything a
task needs to run is copied into its `TaskNode` when the graph is assembled. This is the one
place where definitions (strict input types) become stored types (`core.snapshots`): `_node`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import TYPE_CHECKING

import msgspec

from core.definitions import (
    ENV_NAME_PATTERN,
    NO_RETRIES,
    Definitions,
    RetryPolicy,
    Scalar,
    TaskDef,
    env_value,
    split_dependency,
    suggest,
    valid_dependency,
)
from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy
from core.errors import Invalid
from core.snapshots import NO_RETRY, RetrySpec
from core.snapshots import TaskNode as TaskNode  # the public name services use

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from core.definitions import ParameterSetDef


class GraphError(Invalid):
    """A graph could not be assembled; the message is one line naming what and where."""


# --- Schedule-time parameter overrides ----------------------------------------------------------

_ENV_NAME_RE = re.compile(ENV_NAME_PATTERN)


class Overrides(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Parameters given when a run is scheduled (`--param`), the top of the precedence.

    `all` applies to every node; `per_task` is keyed by task id (every node of that task) or by
    node id `task:set` (that node only), and beats `all`.
    """

    all: dict[str, str] = {}
    per_task: dict[str, dict[str, str]] = {}


NO_OVERRIDES = Overrides()


def parse_param(text: str) -> tuple[str | None, str, str]:
    """`KEY=VALUE` -> (None, KEY, VALUE); `TASK.KEY=VALUE` -> (TASK, KEY, VALUE).

    TASK may also be a node id `task:set`. The value may contain `=` and may be empty.
    """
    target, equals, value = text.partition("=")
    task, dot, key = target.rpartition(".")
    if not equals or not _ENV_NAME_RE.match(key) or (dot and not valid_dependency(task)):
        raise GraphError(f"invalid --param {text!r}: expected KEY=VALUE or TASK.KEY=VALUE")
    return (task if dot else None), key, value


def overrides_from(params: Iterable[str]) -> Overrides:
    """Overrides from `--param` texts; a later value for the same key wins."""
    every: dict[str, str] = {}
    per_task: dict[str, dict[str, str]] = {}
    for text in params:
        task, key, value = parse_param(text)
        if task is None:
            every[key] = value
        else:
            per_task.setdefault(task, {})[key] = value
    return Overrides(all=every, per_task=per_task)


def check_overrides_env(overrides: Overrides, policy: EnvPolicy = DEFAULT_ENV_POLICY) -> None:
    """GraphError (one line naming the parameter) for the first override `policy` refuses:
    a denied name, a value with a NUL byte, a value too large."""
    for task, values in ((None, overrides.all), *overrides.per_task.items()):
        for key, value in values.items():
            problem = policy.problem(key, value)
            if problem is not None:
                name = key if task is None else f"{task}.{key}"
                raise GraphError(f"--param {name}: {problem}")


# --- Graph assembly -----------------------------------------------------------------------------


def outcome_graph(
    defs: Definitions, target: str, overrides: Overrides = NO_OVERRIDES
) -> tuple[TaskNode, ...]:
    """The graph that makes `target` (a task id or `task:set`) happen: it and its prerequisites.

    Only ancestors are included, never dependents or siblings. Nodes come in topological order.
    """
    _check_target(defs, target)
    _check_overrides(overrides, defs.tasks)
    return tuple(_assemble(defs, [target], defs.tasks, {}, overrides, scope=""))


def dag_graph(
    defs: Definitions, dag_id: str, overrides: Overrides = NO_OVERRIDES
) -> tuple[TaskNode, ...]:
    """The graph of a DAG: its entries (references with overrides, or inline tasks).

    A reference takes the task file and replaces whatever fields the entry gives; the entry's
    `parameters` are layered above the task's. Dependencies must be tasks of the DAG.
    """
    dag = defs.dags.get(dag_id)
    if dag is None:
        raise GraphError(f"unknown DAG {dag_id!r}" + suggest(dag_id, defs.dags))
    specs: dict[str, TaskDef] = {}
    entry_parameters: dict[str, Mapping[str, Scalar]] = {}
    for entry in dag.tasks:
        if entry.id in specs:
            raise GraphError(f"task {entry.id!r} appears twice in DAG {dag_id!r}")
        base = defs.tasks.get(entry.id)
        if base is None and entry.command is None:
            raise GraphError(
                f"DAG {dag_id!r}: {entry.id!r} is not a task definition and has no command"
            )
        changes = {
            name: getattr(entry, name)
            for name in _ENTRY_OVERRIDES
            if getattr(entry, name) is not None
        }
        task = (
            msgspec.structs.replace(base, **changes)
            if base is not None
            else TaskDef(id=entry.id, **changes)
        )
        specs[entry.id] = task
        entry_parameters[entry.id] = entry.parameters
    _check_overrides(overrides, {**defs.tasks, **specs})
    nodes = _assemble(
        defs, list(specs), specs, entry_parameters, overrides, scope=f"DAG {dag_id!r}"
    )
    return tuple(nodes)


def extend_graph(
    existing: Mapping[str, TaskNode],
    defs: Definitions,
    *,
    after: str,
    next_tasks: Sequence[str],
    parameters: Mapping[str, Mapping[str, str]],
    overrides: Overrides = NO_OVERRIDES,
) -> tuple[TaskNode, ...]:
    """The nodes an evaluation point `after` adds to a run by asking for `next_tasks`.

    Each requested task (id or `task:set`) not already in the run becomes a node that also
    depends on `after`; prerequisites missing from the run come along (without that extra
    dependency). `parameters[task]` (task id or node id) is layered on top of everything,
    including the run's schedule-time `overrides`. Returns only new nodes, in topological order.

    Which definitions: new nodes are resolved from `defs`, the definitions current when the
    decision is applied (the orchestrator passes its latest ones), not from the run's snapshot.
    The snapshot holds only the tasks of the graph that was scheduled, and an evaluation point
    may ask for any task, so recording every definition in each RunScheduled would be the only
    alternative. Tasks already in the run keep their snapshot: they are never rebuilt, a
    requested task already in the run is not added again, and prerequisites already in the run
    are used as they are (DESIGN invariant 5 holds for every node the run has). The nodes added
    are recorded in GraphExtended, so replaying the run never reads definitions again.
    """
    if after not in existing:
        raise GraphError(f"evaluation point {after!r} is not a task of this run")
    for wanted in next_tasks:
        _check_target(defs, wanted)
    for key in parameters:
        if key not in next_tasks and split_dependency(key)[0] not in defs.tasks:
            raise GraphError(f"parameters given for unknown task {key!r}")

    top = Overrides(
        all=overrides.all,
        per_task={
            **overrides.per_task,
            **{
                key: {**overrides.per_task.get(key, {}), **values}
                for key, values in parameters.items()
            },
        },
    )
    requested = [r for r in dict.fromkeys(next_tasks) if r not in existing]
    nodes = _assemble(
        defs, requested, defs.tasks, {}, top, scope="", existing=existing, requested_after=after
    )
    return tuple(nodes)


_NO_PARAMETERS: Mapping[str, Scalar] = {}
# DagTask fields that replace the task file's for that DAG (parameters are layered instead).
_ENTRY_OVERRIDES = (
    "command",
    "name",
    "description",
    "dependencies",
    "parameter_sets",
    "queue",
    "retries",
    "timeout_seconds",
    "evaluation_point",
    "tags",
)


def _check_target(defs: Definitions, target: str) -> None:
    task_id, set_id = split_dependency(target)
    if task_id not in defs.tasks:
        raise GraphError(f"unknown task {task_id!r}" + suggest(task_id, defs.tasks))
    if set_id is not None and set_id not in defs.parameter_sets:
        raise GraphError(
            f"unknown parameter set {set_id!r} in {target!r}" + suggest(set_id, defs.parameter_sets)
        )


def _check_overrides(overrides: Overrides, known: Mapping[str, object]) -> None:
    """A `--param task.KEY=V` naming no task is a typo; say so rather than ignore it."""
    for key in overrides.per_task:
        task_id = split_dependency(key)[0]
        if task_id not in known:
            raise GraphError(f"--param for unknown task {task_id!r}" + suggest(task_id, known))


def _assemble(
    defs: Definitions,
    roots: Sequence[str],
    tasks: Mapping[str, TaskDef],
    entry_parameters: Mapping[str, Mapping[str, Scalar]],
    overrides: Overrides,
    *,
    scope: str,
    existing: Mapping[str, TaskNode] | None = None,
    requested_after: str | None = None,
) -> list[TaskNode]:
    """Nodes for `roots` and their transitive dependencies, in topological order.

    Dependencies already in `existing` are not rebuilt. With `requested_after`, each root also
    depends on that node (an evaluation point adding tasks). One iterative depth-first pass
    builds the nodes, orders them and finds cycles.
    """
    present = existing if existing is not None else {}
    requested = set(roots) if requested_after is not None else set()
    order: list[TaskNode] = []
    done: set[str] = set()
    for root in roots:
        if root in done or root in present:
            continue
        first = _build(defs, root, None, tasks, entry_parameters, overrides, scope)
        if requested_after is not None:
            first = _also_after(first, requested_after)
        on_path = {root: 0}
        path = [first]
        pending = [iter(first.dependencies)]
        while pending:
            for dep in pending[-1]:
                if dep in done or dep in present:
                    continue
                if dep in on_path:
                    cycle = [n.id for n in path[on_path[dep] :]]
                    raise GraphError("dependency cycle: " + " -> ".join([*cycle, dep]))
                node = _build(defs, dep, path[-1].id, tasks, entry_parameters, overrides, scope)
                if requested_after is not None and dep in requested:
                    node = _also_after(node, requested_after)
                on_path[dep] = len(path)
                path.append(node)
                pending.append(iter(node.dependencies))
                break
            else:
                pending.pop()
                node = path.pop()
                del on_path[node.id]
                done.add(node.id)
                order.append(node)
    return order


def _also_after(node: TaskNode, after: str) -> TaskNode:
    if after in node.dependencies:
        return node
    return msgspec.structs.replace(node, dependencies=(*node.dependencies, after))


def _build(
    defs: Definitions,
    node_id: str,
    needed_by: str | None,
    tasks: Mapping[str, TaskDef],
    entry_parameters: Mapping[str, Mapping[str, Scalar]],
    overrides: Overrides,
    scope: str,
) -> TaskNode:
    task_id, set_id = split_dependency(node_id)
    task = tasks.get(task_id)
    if task is None:
        if needed_by is None:
            raise GraphError(f"unknown task {task_id!r}")
        where = f" of {scope}" if scope else ""
        raise GraphError(f"task {needed_by!r} depends on {task_id!r}, which is not a task{where}")
    return _node(defs, task, set_id, entry_parameters.get(task_id, _NO_PARAMETERS), overrides)


def _node(
    defs: Definitions,
    task: TaskDef,
    set_id: str | None,
    entry_parameters: Mapping[str, Scalar],
    overrides: Overrides,
) -> TaskNode:
    """One resolved node; parameters from lowest to highest precedence."""
    node_id = task.id if set_id is None else f"{task.id}:{set_id}"
    if not task.parameter_sets and set_id is None and not entry_parameters:
        parameters = _strings(task.parameters)  # the common case, kept cheap
    else:
        parameters = {}
        for name in task.parameter_sets:
            parameters.update(_strings(_parameter_set(defs, name, task.id).parameters))
        parameters.update(_strings(task.parameters))
        if set_id is not None:
            parameters.update(_strings(_parameter_set(defs, set_id, task.id).parameters))
        parameters.update(_strings(entry_parameters))
    if overrides.all:
        parameters.update(overrides.all)
    if overrides.per_task:
        parameters.update(overrides.per_task.get(task.id, {}))
        if set_id is not None:
            parameters.update(overrides.per_task.get(node_id, {}))
    deps = task.dependencies
    if len(deps) > 1 and len(set(deps)) != len(deps):
        # Only task files are checked for repeats: a DAG entry (or definitions built in memory)
        # may list a dependency twice. The run's counters would cope (`RunState._add_nodes`
        # counts each listing and the dependency's success releases each), so this is not about
        # correctness: the snapshot, `graph` and GraphExtended record each edge once.
        deps = tuple(dict.fromkeys(deps))
    name = task.display_name if set_id is None else f"{task.display_name} [{set_id}]"
    return TaskNode(
        id=node_id,
        task_id=task.id,
        command=task.command,
        name=name,
        queue=task.queue,
        dependencies=deps,
        parameters=parameters,
        retries=retry_spec(task.retry_policy),
        timeout_seconds=task.timeout_seconds,
        evaluation_point=task.evaluation_point,
    )


def retry_spec(policy: RetryPolicy) -> RetrySpec:
    """The stored retry spec of a definition's retry policy, every value written out."""
    if policy == NO_RETRIES:
        return NO_RETRY
    return RetrySpec(
        count=policy.count,
        delay_seconds=policy.delay_seconds,
        backoff=policy.backoff,
        max_delay_seconds=policy.max_delay_seconds,
    )


def _strings(values: Mapping[str, Scalar]) -> dict[str, str]:
    # Inlined env_value: this runs for every parameter of every node.
    return {
        k: v
        if v.__class__ is str
        else ("true" if v else "false")
        if v.__class__ is bool
        else str(v)
        for k, v in values.items()
    }


def _parameter_set(defs: Definitions, set_id: str, task_id: str) -> ParameterSetDef:
    found = defs.parameter_sets.get(set_id)
    if found is None:
        raise GraphError(f"task {task_id!r} uses unknown parameter set {set_id!r}")
    return found


# --- Context and environment --------------------------------------------------------------------

_MACRO_RE = re.compile(r"\$\{(RUN_ID|DATE|TIME|DATETIME|RANDOM:(\d{1,3}))\}")
MAX_RANDOM = 256


def resolve_context(
    defs: Definitions,
    context_id: str | None,
    *,
    run_id: str,
    now: dt.datetime,
    entropy: bytes = b"",
) -> dict[str, str]:
    """A context's variables for one run: inherited ones first, macros expanded.

    Macros: `${RUN_ID}`, `${DATE}` (YYYY-MM-DD), `${TIME}` (HH:MM:SS), `${DATETIME}` (ISO 8601),
    all in UTC (a naive `now` is taken as UTC), and `${RANDOM:n}` (n hex characters, 1-256,
    derived from `entropy`: the same entropy gives the same values; pass `os.urandom(16)` and
    record the result in RunScheduled). Anything else, such as `${HOME}`, is left as written.
    """
    if context_id is None:
        return {}
    chain: list[str] = []
    current: str | None = context_id
    while current is not None:
        if current in chain:
            raise GraphError("context inheritance cycle: " + " -> ".join([*chain, current]))
        context = defs.contexts.get(current)
        if context is None:
            where = f" (extended by {chain[-1]!r})" if chain else ""
            raise GraphError(
                f"unknown context {current!r}{where}" + suggest(current, defs.contexts)
            )
        chain.append(current)
        current = context.extends
    merged: dict[str, str] = {}
    for name in reversed(chain):
        merged.update((k, env_value(v)) for k, v in defs.contexts[name].variables.items())
    utc = (now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    fixed = {
        "RUN_ID": run_id,
        "DATE": utc.strftime("%Y-%m-%d"),
        "TIME": utc.strftime("%H:%M:%S"),
        "DATETIME": utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    random_source = hashlib.shake_256(entropy)
    used = 0

    def expand(match: re.Match[str]) -> str:
        nonlocal used
        if match[2] is None:
            return fixed[match[1]]
        count = int(match[2])
        if not 1 <= count <= MAX_RANDOM:
            return match[0]
        # hexdigest(n) gives n bytes, 2n hex characters; take the next `count` of the stream.
        text = random_source.hexdigest((used + count + 1) // 2)[used : used + count]
        used += count
        return text

    return {key: _MACRO_RE.sub(expand, value) for key, value in merged.items()}


def task_environment(
    context: Mapping[str, str], node: TaskNode, *, run_id: str, attempt: int
) -> dict[str, str]:
    """What a command sees on top of the agent's environment: context < parameters < ids."""
    env = dict(context)
    env.update(node.parameters)
    env["CYCLONETIX_RUN_ID"] = run_id
    env["CYCLONETIX_TASK_ID"] = node.id
    env["CYCLONETIX_ATTEMPT"] = str(attempt)
    return env
