"""The definition types: what users write in YAML, as frozen msgspec Structs.

These are input types: strict (`forbid_unknown_fields`, no implicit conversions), so a typo in a
key is an error naming it. Never store them in an event: the log has its own snapshot types
(`core.snapshots`), mapped from these when a graph is assembled.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

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
    """How often a failed task is tried again, and how long to wait between tries.

    A run records it as a `core.snapshots.RetrySpec`, which computes the delays.
    """

    count: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    delay_seconds: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    backoff: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    max_delay_seconds: Annotated[float, msgspec.Meta(ge=0)] = 300.0


NO_RETRIES = RetryPolicy()

# What a completion webhook may be sent on (core.events.OUTCOMES); `on` is checked against
# them in `core.definitions.checks`, which names the allowed ones.
NOTIFY_OUTCOMES = ("succeeded", "failed", "cancelled")


class NotifyDef(_Strict, frozen=True):
    """A completion webhook: POST a summary of the run to `url` when it ends in one of `on`,
    signed with the secret in the orchestrator's environment variable `secret_env` (none:
    unsigned). The url's scheme and host are checked in `core.definitions.checks`."""

    url: Annotated[str, msgspec.Meta(min_length=1)]
    on: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)] = NOTIFY_OUTCOMES
    secret_env: EnvName | None = None


Notifications = Annotated[tuple[NotifyDef, ...], msgspec.Meta(min_length=1)]


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
    schedule: Schedule | str | None = None  # a cron string is short for {cron: ...}
    notify: Notifications | None = None  # when this task is the outcome asked for

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


# A schedule's parameter override: `KEY` for every task of the run, or `TASK.KEY` for one.
PARAM_KEY_PATTERN = r"^([A-Za-z0-9_][A-Za-z0-9_-]{0,127}\.)?[A-Za-z_][A-Za-z0-9_]*$"


class Schedule(_Strict, frozen=True):
    """When a task or DAG starts by itself (`core.schedules` says which slots fire).

    `schedule: "<cron>"` is short for `schedule: {cron: "<cron>"}`. `max_active_runs` left out
    means the DAG's own `max_active_runs`, else 1.
    """

    cron: str
    timezone: str = "UTC"  # an IANA name; cron fields match this zone's wall clock
    catchup: bool = False  # after downtime: every missed slot (bounded), or only the latest
    max_active_runs: Annotated[int, msgspec.Meta(ge=1)] | None = None
    context: Id | None = None
    params: dict[str, Scalar] = {}  # KEY or TASK.KEY (PARAM_KEY_PATTERN, checked in checks)


DagSchedule = Schedule  # (its earlier name)


class DagDef(_Strict, frozen=True):
    """A named set of tasks run together."""

    id: Id
    tasks: Annotated[tuple[DagTask, ...], msgspec.Meta(min_length=1)]
    name: str = ""
    description: str = ""
    context: Id | None = None
    schedule: Schedule | str | None = None  # a cron string is short for {cron: ...}
    max_active_runs: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tags: tuple[str, ...] = ()
    notify: Notifications | None = None

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


_ID_RE = re.compile(ID_PATTERN)


def split_dependency(dependency: str) -> tuple[str, str | None]:
    """`task` -> (task, None); `task:set` -> (task, set). No validation."""
    task_id, colon, set_id = dependency.partition(":")
    return task_id, (set_id if colon else None)


def valid_dependency(dependency: str) -> bool:
    task_id, set_id = split_dependency(dependency)
    return bool(_ID_RE.match(task_id)) and (set_id is None or bool(_ID_RE.match(set_id)))
