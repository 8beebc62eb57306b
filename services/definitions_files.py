"""Reading a definitions folder from disk; parsing and checking are core's (pure) job."""

from __future__ import annotations

import os
from pathlib import Path

import core
import services
from core.definitions import (
    MAX_FILE_BYTES,
    YAML_SUFFIXES,
    DefinitionError,
    DefinitionErrors,
    Definitions,
    load_definitions,
    size_problem,
)
from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy
from services.settings import Settings, load_settings

DEFINITIONS_ENV = "CYCLONETIX_DEFINITIONS"
# The example definitions: in an installed wheel they are package data (pyproject.toml
# force-includes infra/examples there); in a checkout or an editable install, infra/examples
# itself, the one source of both.
BUNDLED_EXAMPLES = Path(services.__file__).resolve().parent / "examples"
REPOSITORY_EXAMPLES = Path(core.__file__).resolve().parent.parent / "infra" / "examples"


def default_definitions_dir(settings: Settings | None = None) -> Path:
    """The definitions setting ($CYCLONETIX_DEFINITIONS, cyclonetix.yaml), else the examples."""
    if settings is None:
        settings = load_settings()
    if settings.definitions_dir is not None:
        return settings.definitions_dir
    return examples_dir()


def examples_dir() -> Path:
    """The bundled examples: installed package data first, else the repository's folder."""
    return BUNDLED_EXAMPLES if BUNDLED_EXAMPLES.is_dir() else REPOSITORY_EXAMPLES


def read_definitions_folder(path: Path) -> dict[str, bytes]:
    """Every `.yaml`/`.yml` file below `path`, keyed by its POSIX path relative to `path`.

    Hidden files and folders (`.git`, editor swap files) are skipped; symlinked folders are
    followed once. Raises DefinitionErrors naming the folder if it is missing, or naming every
    file that cannot be read.
    """
    if not path.exists():
        raise DefinitionErrors([DefinitionError(str(path), "", "no such definitions folder")])
    if not path.is_dir():
        raise DefinitionErrors(
            [DefinitionError(str(path), "", "not a folder (expected a definitions folder)")]
        )
    files: dict[str, bytes] = {}
    errors: list[DefinitionError] = []
    visited: set[Path] = set()
    for folder, dirnames, filenames in os.walk(path, followlinks=True):
        here = Path(folder)
        real = here.resolve()
        if real in visited:  # a symlink loop, or the same folder linked twice
            dirnames.clear()
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.endswith(YAML_SUFFIXES):
                continue
            file = here / name
            relative = file.relative_to(path).as_posix()
            try:
                content = _read_bounded(file)
                size = file.stat().st_size if content is None else len(content)
            except OSError as exc:
                errors.append(DefinitionError(relative, "", f"cannot read: {exc.strerror}"))
                continue
            if content is None:  # larger than a definitions file may be: never read whole
                too_large = size_problem(max(size, MAX_FILE_BYTES + 1))
                errors.append(DefinitionError(relative, "", too_large or ""))
                continue
            files[relative] = content
    if errors:
        raise DefinitionErrors(errors)
    return files


def _read_bounded(file: Path) -> bytes | None:
    """The file's bytes, or None when it holds more than MAX_FILE_BYTES (reading no more)."""
    with file.open("rb") as f:
        content = f.read(MAX_FILE_BYTES + 1)
    return None if len(content) > MAX_FILE_BYTES else content


def load_definitions_folder(path: Path, env_policy: EnvPolicy = DEFAULT_ENV_POLICY) -> Definitions:
    """Read, parse and check a definitions folder; DefinitionErrors lists every problem.

    `env_policy`: the environment variables no parameter or context variable may set."""
    return load_definitions(read_definitions_folder(path), env_policy=env_policy)
