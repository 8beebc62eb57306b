"""Loading: YAML texts -> Definitions, every problem one line naming its file and key.

Each file is parsed on its own (`parse_definitions`); rules across files live in `checks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from core.definitions.checks import by_file, check_definitions
from core.definitions.messages import DefinitionError, DefinitionErrors, show, validation_error
from core.definitions.model import ContextDef, DagDef, Definitions, ParameterSetDef, TaskDef
from core.definitions.yaml import read_yaml
from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy

if TYPE_CHECKING:
    from collections.abc import Mapping

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


def load_definitions(
    files: Mapping[str, bytes | str], *, env_policy: EnvPolicy = DEFAULT_ENV_POLICY
) -> Definitions:
    """Parse and check definition files (relative path -> content); DefinitionErrors if any.

    `env_policy`: the environment variables no parameter or context variable may set."""
    defs, errors = parse_definitions(files)
    errors = by_file(errors + check_definitions(defs, env_policy=env_policy))
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
        obj, problem = read_yaml(files[path])
        if problem:
            errors.append(DefinitionError(path, "", problem))
            continue
        kind = KIND_NAMES[folder]
        if not isinstance(obj, dict):
            got = "an empty file" if obj is None else show(obj)
            errors.append(
                DefinitionError(path, "", f"expected a mapping of {kind} fields, got {got}")
            )
            continue
        struct_type = FOLDERS[folder]
        try:
            definition = msgspec.convert(obj, struct_type, strict=True)
        except msgspec.ValidationError as exc:
            errors.append(validation_error(path, obj, struct_type, exc))
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
