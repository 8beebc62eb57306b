"""Definitions users write in YAML: tasks, DAGs, contexts and parameter sets.

The package is split by what it holds: `model` (the strict input types), `yaml` (the YAML
reader), `load` (files -> Definitions), `checks` (rules across files) and `messages` (every
problem as one `file: key: message` line). Every name is re-exported here, so
`from core.definitions import ...` keeps working.
"""

from __future__ import annotations

from core.definitions.checks import (
    check_definitions,
    dag_dependencies,
    find_cycles,
    valid_timezone,
)
from core.definitions.load import (
    FOLDERS,
    KIND_NAMES,
    YAML_SUFFIXES,
    load_definitions,
    parse_definitions,
)
from core.definitions.messages import DefinitionError, DefinitionErrors, suggest
from core.definitions.model import (
    DEFAULT_QUEUE,
    ENV_NAME_PATTERN,
    ID_PATTERN,
    NO_RETRIES,
    QUEUE_PATTERN,
    ContextDef,
    DagDef,
    DagSchedule,
    DagTask,
    Definitions,
    EnvName,
    Id,
    Kind,
    ParameterSetDef,
    RetryPolicy,
    Scalar,
    Schedule,
    TaskDef,
    env_value,
    split_dependency,
    valid_dependency,
)
from core.definitions.yaml import (
    MAX_ALIAS_EXPANSION,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_VALUES,
    read_yaml,
    size_problem,
)

__all__ = [
    "DEFAULT_QUEUE",
    "ENV_NAME_PATTERN",
    "FOLDERS",
    "ID_PATTERN",
    "KIND_NAMES",
    "MAX_ALIAS_EXPANSION",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_VALUES",
    "NO_RETRIES",
    "QUEUE_PATTERN",
    "YAML_SUFFIXES",
    "ContextDef",
    "DagDef",
    "DagSchedule",
    "DagTask",
    "DefinitionError",
    "DefinitionErrors",
    "Definitions",
    "EnvName",
    "Id",
    "Kind",
    "ParameterSetDef",
    "RetryPolicy",
    "Scalar",
    "Schedule",
    "TaskDef",
    "check_definitions",
    "dag_dependencies",
    "env_value",
    "find_cycles",
    "load_definitions",
    "parse_definitions",
    "read_yaml",
    "size_problem",
    "split_dependency",
    "suggest",
    "valid_dependency",
    "valid_timezone",
]
