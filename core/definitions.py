"""Definitions users write in YAML: tasks, DAGs, contexts and parameter sets.

These are the frozen msgspec Structs the loader produces. Strictness lives in the types
(`forbid_unknown_fields`, no implicit conversions); cross-file rules (duplicate ids, unknown
dependencies, cycles, bad cron strings) live in the loader below.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import msgspec.inspect
import yaml

from core.cron import parse_cron

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml: same behaviour, slower
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

# Ids become NATS subject tokens and URL path segments: no dots, spaces, colons or slashes.
ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$"
Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
# Parameter and variable names are exported as environment variables.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, msgspec.Meta(pattern=ENV_NAME_PATTERN)]
Scalar = str | int | float | bool
QUEUE_PATTERN = ID_PATTERN
DEFAULT_QUEUE = "default"


class _Strict(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Base of every user-written definition: unknown keys are errors, values never mutate."""


class RetryPolicy(_Strict, frozen=True):
    """How often a failed task is tried again, and how long to wait between tries."""

    count: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    delay_seconds: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    backoff: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    max_delay_seconds: Annotated[float, msgspec.Meta(ge=0)] = 300.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2 = first retry)."""
        if attempt <= 1:
            return 0.0
        return float(
            min(self.max_delay_seconds, self.delay_seconds * self.backoff ** (attempt - 2))
        )


NO_RETRIES = RetryPolicy()


class TaskDef(_Strict, frozen=True):
    """One task: a shell command, what it needs first, where and how it runs."""

    id: Id
    command: Annotated[str, msgspec.Meta(min_length=1)]
    name: str = ""
    description: str = ""
    dependencies: tuple[str, ...] = ()  # task ids, or "task_id:parameter_set"
    parameters: dict[EnvName, Scalar] = {}
    parameter_sets: tuple[Id, ...] = ()  # applied in order, under the task's own parameters
    queue: Annotated[str, msgspec.Meta(pattern=QUEUE_PATTERN)] = DEFAULT_QUEUE
    retries: RetryPolicy | Annotated[int, msgspec.Meta(ge=0, le=100)] = NO_RETRIES
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None
    evaluation_point: bool = False
    tags: tuple[str, ...] = ()
    schedule: str | None = None  # cron, five fields

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def retry_policy(self) -> RetryPolicy:
        return (
            self.retries
            if isinstance(self.retries, RetryPolicy)
            else RetryPolicy(count=self.retries)
        )


class DagTask(_Strict, frozen=True):
    """An entry of a DAG's `tasks`: a reference to a task file with overrides, or an inline spec.

    A reference (`- id: load`) takes everything from the task definition; any field given here
    overrides it for this DAG. An entry with a `command` and no task file of that id is inline.
    """

    id: Id
    command: str | None = None
    name: str | None = None
    description: str | None = None
    dependencies: tuple[str, ...] | None = None
    parameters: dict[EnvName, Scalar] = {}
    parameter_sets: tuple[Id, ...] | None = None
    queue: Annotated[str, msgspec.Meta(pattern=QUEUE_PATTERN)] | None = None
    retries: RetryPolicy | Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None
    evaluation_point: bool | None = None
    tags: tuple[str, ...] | None = None


class DagSchedule(_Strict, frozen=True):
    cron: str
    timezone: str = "UTC"
    catchup: bool = False


class DagDef(_Strict, frozen=True):
    """A named set of tasks run together."""

    id: Id
    tasks: Annotated[tuple[DagTask, ...], msgspec.Meta(min_length=1)]
    name: str = ""
    description: str = ""
    context: Id | None = None
    schedule: DagSchedule | str | None = None  # a cron string is short for {cron: ...}
    max_active_runs: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tags: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        return self.name or self.id


class ContextDef(_Strict, frozen=True):
    """Named variables for a run, optionally extending another context."""

    id: Id
    variables: dict[EnvName, Scalar] = {}
    extends: Id | None = None
    description: str = ""


class ParameterSetDef(_Strict, frozen=True):
    """Reusable parameters; `task:set` in a dependency runs that task with this set."""

    id: Id
    parameters: dict[EnvName, Scalar] = {}
    description: str = ""
    tags: tuple[str, ...] = ()


Kind = Literal["task", "dag", "context", "parameter_set"]


class Definitions(msgspec.Struct, frozen=True, kw_only=True):
    """A validated, self-consistent set of definitions."""

    tasks: dict[str, TaskDef] = {}
    dags: dict[str, DagDef] = {}
    contexts: dict[str, ContextDef] = {}
    parameter_sets: dict[str, ParameterSetDef] = {}
    # Where each definition came from, keyed `<folder>/<id>` (e.g. `tasks/extract` ->
    # `tasks/etl/extract.yaml`), so cross-file errors can name the file. A key whose definition is
    # missing from the dicts above names a file that failed to load: other files may still refer
    # to that id without a second, misleading "unknown" error.
    sources: dict[str, str] = {}

    def source(self, folder: str, id: str) -> str:
        """The file a definition came from, or `<folder>/<id>` for one built in memory."""
        return self.sources.get(f"{folder}/{id}", f"{folder}/{id}")


def env_value(value: Scalar) -> str:
    """A parameter value as the command sees it: plain text, never JSON-quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Loading: YAML texts -> Definitions, with every problem reported as one line naming file and key.
# ---------------------------------------------------------------------------------------------

# The first path segment of a definition file decides its kind.
FOLDERS: dict[str, type[TaskDef | DagDef | ContextDef | ParameterSetDef]] = {
    "tasks": TaskDef,
    "dags": DagDef,
    "contexts": ContextDef,
    "parameter_sets": ParameterSetDef,
}
KIND_NAMES = {
    "tasks": "task",
    "dags": "DAG",
    "contexts": "context",
    "parameter_sets": "parameter set",
}
YAML_SUFFIXES = (".yaml", ".yml")

_ID_RE = re.compile(ID_PATTERN)
_PATTERN_WORDS = {
    ID_PATTERN: "an id (1-128 letters, digits, '_' or '-', not starting with '-')",
    ENV_NAME_PATTERN: "a variable name (letters, digits and '_', not starting with a digit)",
}
_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "nothing",
}


class DefinitionError(msgspec.Struct, frozen=True):
    """One problem in the definitions: which file, which key (may be empty), what is wrong."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.message}"
        return f"{self.file}: {self.message}"


class DefinitionErrors(Exception):
    """Definitions that cannot be used; `str()` gives one line per problem."""

    def __init__(self, errors: Sequence[DefinitionError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def load_definitions(files: Mapping[str, bytes | str]) -> Definitions:
    """Parse and check definition files (relative path -> content); DefinitionErrors if any."""
    defs, errors = parse_definitions(files)
    errors = _by_file(errors + check_definitions(defs))
    if errors:
        raise DefinitionErrors(errors)
    return defs


def parse_definitions(
    files: Mapping[str, bytes | str],
) -> tuple[Definitions, list[DefinitionError]]:
    """Parse each file on its own: YAML, field names and types, duplicate ids.

    Keys are POSIX paths relative to the definitions folder; the first segment is the kind
    (`tasks/`, `dags/`, `contexts/`, `parameter_sets/`, nested folders allowed below). Files not
    ending in `.yaml`/`.yml` are ignored. Cross-file rules are `check_definitions`' job.
    """
    errors: list[DefinitionError] = []
    found: dict[str, dict[str, Any]] = {folder: {} for folder in FOLDERS}
    sources: dict[str, str] = {}
    for path in sorted(files):
        if not path.endswith(YAML_SUFFIXES):
            continue
        folder, slash, _ = path.partition("/")
        if not slash or folder not in FOLDERS:
            errors.append(
                DefinitionError(
                    path,
                    "",
                    "not in a definitions folder: put it under tasks/, dags/, contexts/ "
                    "or parameter_sets/",
                )
            )
            continue
        obj, problem = _read_yaml(files[path])
        if problem:
            errors.append(DefinitionError(path, "", problem))
            continue
        kind = KIND_NAMES[folder]
        if not isinstance(obj, dict):
            got = "an empty file" if obj is None else _show(obj)
            errors.append(
                DefinitionError(path, "", f"expected a mapping of {kind} fields, got {got}")
            )
            continue
        struct_type = FOLDERS[folder]
        try:
            definition = msgspec.convert(obj, struct_type, strict=True)
        except msgspec.ValidationError as exc:
            errors.append(_validation_error(path, obj, struct_type, exc))
            raw_id = obj.get("id")
            if isinstance(raw_id, str):
                sources.setdefault(f"{folder}/{raw_id}", path)
            continue
        key = f"{folder}/{definition.id}"
        if key in sources:
            errors.append(
                DefinitionError(
                    path,
                    "id",
                    f"duplicate {kind} id {definition.id!r}: also defined in {sources[key]}",
                )
            )
            continue
        sources[key] = path
        found[folder][definition.id] = definition
    defs = Definitions(
        tasks=found["tasks"],
        dags=found["dags"],
        contexts=found["contexts"],
        parameter_sets=found["parameter_sets"],
        sources=sources,
    )
    return defs, errors


def check_definitions(defs: Definitions) -> list[DefinitionError]:
    """Every cross-file problem at once: unknown references, bad schedules, cycles, DAG rules."""
    errors: list[DefinitionError] = []
    _check_tasks(defs, errors)
    for dag in defs.dags.values():
        _check_dag(defs, dag, errors)
    _check_contexts(defs, errors)
    return _by_file(errors)


def split_dependency(dependency: str) -> tuple[str, str | None]:
    """`task` -> (task, None); `task:set` -> (task, set). No validation."""
    task_id, colon, set_id = dependency.partition(":")
    return task_id, (set_id if colon else None)


def valid_dependency(dependency: str) -> bool:
    task_id, set_id = split_dependency(dependency)
    return bool(_ID_RE.match(task_id)) and (set_id is None or bool(_ID_RE.match(set_id)))


def suggest(name: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` when something close exists, else empty (only on error paths)."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _by_file(errors: list[DefinitionError]) -> list[DefinitionError]:
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
            _check_cron(task.schedule, defs.source("tasks", task_id), "schedule", errors)
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
    if dag.context is not None and not _known(defs, "contexts", dag.context):
        errors.append(
            DefinitionError(
                file,
                "context",
                f"unknown context {dag.context!r}" + suggest(dag.context, defs.contexts),
            )
        )
    if isinstance(dag.schedule, str):
        _check_cron(dag.schedule, file, "schedule", errors)
    elif dag.schedule is not None:
        _check_cron(dag.schedule.cron, file, "schedule.cron", errors)
        if not valid_timezone(dag.schedule.timezone):
            errors.append(
                DefinitionError(
                    file,
                    "schedule.timezone",
                    f"unknown timezone {dag.schedule.timezone!r} (use an IANA name such as "
                    "'UTC' or 'Europe/London')",
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


# --- YAML ------------------------------------------------------------------------------------


class _Loader(_BaseLoader):
    """Safe YAML with fewer surprises for configuration.

    Duplicate keys are errors (PyYAML silently keeps the last). Only true/false are booleans
    (`NO` as a country code stays a string) and dates stay strings: values end up as environment
    variables, so the text the user wrote is what they expect to see.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_MERGE_TAG = "tag:yaml.org,2002:merge"
_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _read_yaml(content: bytes | str) -> tuple[Any, str]:
    """The YAML document, or a one-line problem naming the line."""
    try:
        return yaml.load(content, Loader=_Loader), ""  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        context = ""
        if exc.context and exc.problem and exc.context_mark:
            context = f" ({exc.context} started at line {exc.context_mark.line + 1})"
        return None, f"invalid YAML{where}: {what}{context}"
    except yaml.YAMLError as exc:
        return None, "invalid YAML: " + " ".join(str(exc).split())


def _yaml_type(obj: object) -> str:
    if isinstance(obj, bool):
        return "bool"
    if isinstance(obj, int):
        return "int"
    if isinstance(obj, float):
        return "float"
    if isinstance(obj, str):
        return "str"
    if isinstance(obj, list | tuple):
        return "array"
    if isinstance(obj, dict):
        return "object"
    return "null" if obj is None else type(obj).__name__


# --- msgspec validation errors -> file, key, message ------------------------------------------

_AT_RE = re.compile(r"^(?P<what>.*?) - at (?P<in_key>`key` in )?`(?P<path>\$[^`]*)`$", re.DOTALL)
_SEGMENT_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_FIELD_RE = re.compile(r"^Object (missing required|contains unknown) field `([^`]+)`$")
_EXPECTED_RE = re.compile(r"^Expected `([^`]+)`(.*)$", re.DOTALL)
_REGEX_RE = re.compile(r"^ matching regex '(.*)'$", re.DOTALL)
_GOT_RE = re.compile(r"^, got `([^`]+)`$")
_LENGTH_RE = re.compile(r"^ of length (>=|<=) (\d+)$")

Segment = str | int | None  # field name, list index, or None for "some value of a mapping"


def _validation_error(
    file: str, obj: Any, struct_type: type[msgspec.Struct], exc: msgspec.ValidationError
) -> DefinitionError:
    text = str(exc)
    match = _AT_RE.match(text)
    what, in_key, raw_path = (
        (match["what"], bool(match["in_key"]), match["path"]) if match else (text, False, "$")
    )
    segments: list[Segment] = []
    for seg in _SEGMENT_RE.finditer(raw_path[1:]):
        name, index = seg.group(1), seg.group(2)
        segments.append(name if name is not None else int(index) if index is not None else None)
    info = msgspec.inspect.type_info(struct_type)
    value, segments = _resolve_path(obj, info, segments)

    field = _FIELD_RE.match(what)
    if field:
        segments.append(field[2])
        if field[1] == "missing required":
            return DefinitionError(file, _key(segments), "missing required field")
        allowed = _struct_fields(_type_at(info, segments[:-1]))
        hint = suggest(field[2], allowed) or (
            f" (allowed: {', '.join(allowed)})" if allowed else ""
        )
        return DefinitionError(file, _key(segments), "unknown field" + hint)

    if in_key:
        key_type = _dict_key_type(_type_at(info, segments))
        bad = (
            next((k for k in value if not _matches(k, key_type)), None)
            if isinstance(value, dict)
            else None
        )
        return DefinitionError(
            file, _key(segments), f"invalid name {bad!r}: expected {_describe(what)}"
        )
    return DefinitionError(file, _key(segments), f"expected {_describe(what)}, got {_show(value)}")


def _resolve_path(
    obj: Any, info: msgspec.inspect.Type, segments: list[Segment]
) -> tuple[Any, list[Segment]]:
    """The value at the path, naming the mapping key where msgspec only says `[...]`."""
    value = obj
    resolved: list[Segment] = []
    for seg in segments:
        if seg is None and isinstance(value, dict):
            value_type = _dict_value_type(_type_at(info, resolved))
            bad = next((k for k, v in value.items() if not _matches(v, value_type)), None)
            if bad is None:
                resolved.append(seg)
                value = None
                continue
            resolved.append(str(bad))
            value = value[bad]
        elif isinstance(seg, int) and isinstance(value, list) and seg < len(value):
            resolved.append(seg)
            value = value[seg]
        elif isinstance(seg, str) and isinstance(value, dict):
            resolved.append(seg)
            value = value.get(seg)
        else:
            resolved.append(seg)
            value = None
    return value, resolved


def _key(segments: list[Segment]) -> str:
    out = ""
    for seg in segments:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            name = "[...]" if seg is None else seg
            out += name if not out else f".{name}"
    return out


def _type_at(info: msgspec.inspect.Type, segments: list[Segment]) -> msgspec.inspect.Type | None:
    current: msgspec.inspect.Type | None = info
    for seg in segments:
        if current is None:
            return None
        options = current.types if isinstance(current, msgspec.inspect.UnionType) else (current,)
        following: msgspec.inspect.Type | None = None
        for option in options:
            if isinstance(option, msgspec.inspect.StructType) and isinstance(seg, str):
                following = next((f.type for f in option.fields if f.name == seg), None)
            elif isinstance(option, msgspec.inspect.DictType) and not isinstance(seg, int):
                following = option.value_type
            elif isinstance(
                option, msgspec.inspect.VarTupleType | msgspec.inspect.ListType
            ) and isinstance(seg, int):
                following = option.item_type
            if following is not None:
                break
        current = following
    return current


def _struct_fields(info: msgspec.inspect.Type | None) -> list[str]:
    options = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    for option in options:
        if isinstance(option, msgspec.inspect.StructType):
            return [f.encode_name for f in option.fields]
    return []


def _dict_key_type(info: msgspec.inspect.Type | None) -> msgspec.inspect.Type | None:
    return info.key_type if isinstance(info, msgspec.inspect.DictType) else None


def _dict_value_type(info: msgspec.inspect.Type | None) -> msgspec.inspect.Type | None:
    return info.value_type if isinstance(info, msgspec.inspect.DictType) else None


def _matches(value: object, info: msgspec.inspect.Type | None) -> bool:
    """A shallow check of scalars, enough to point at the offending mapping entry."""
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_matches(value, t) for t in info.types)
    if isinstance(info, msgspec.inspect.StrType):
        pattern = info.pattern
        return isinstance(value, str) and (pattern is None or bool(re.search(pattern, value)))
    if isinstance(info, msgspec.inspect.BoolType):
        return isinstance(value, bool)
    if isinstance(info, msgspec.inspect.IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(info, msgspec.inspect.FloatType):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(info, msgspec.inspect.NoneType):
        return value is None
    return True


def _describe(what: str) -> str:
    """msgspec's "Expected `int | object`, got `str`" -> "an integer or a mapping"."""
    match = _EXPECTED_RE.match(what)
    if not match:
        return what[:1].lower() + what[1:].replace("`", "")
    raw = [t.strip() for t in match[1].split("|")]
    if set(raw) == {"bool", "int", "float", "str"}:
        return "a single value (string, number or true/false)"
    names = [_TYPE_WORDS.get(t, t) for t in raw]
    words = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    rest = match[2]
    if _GOT_RE.match(rest):
        return words
    regex = _REGEX_RE.match(rest)
    if regex:
        return _PATTERN_WORDS.get(regex[1], f"{words} matching {regex[1]!r}")
    length = _LENGTH_RE.match(rest)
    if length:
        least = "at least" if length[1] == ">=" else "at most"
        item = "item" if length[2] == "1" else "items"
        return f"{words} with {least} {length[2]} {item}"
    return words + rest.replace("`", "")


def _show(value: object) -> str:
    kind = _TYPE_WORDS.get(_yaml_type(value), _yaml_type(value))
    if isinstance(value, list) and not value:
        return "an empty list"
    if isinstance(value, dict | list) or value is None:
        return kind
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}"
