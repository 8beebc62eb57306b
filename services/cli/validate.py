"""`cyclonetix validate`: check a definitions folder and report every problem at once."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.definitions import DefinitionErrors, Definitions
from core.env_policy import DENY_ENV_VARIABLE, EnvPolicy, parse_deny_env
from core.errors import Invalid
from core.text import printable
from services.cli.main import CliError
from services.definitions_files import (
    DEFINITIONS_ENV,
    default_definitions_dir,
    load_definitions_folder,
)

DESCRIPTION = (
    "Check a definitions folder (tasks/, dags/, contexts/, parameter_sets/): YAML syntax, "
    "field names and types, unknown tasks, parameter sets and contexts, duplicate ids, cron "
    "schedules and dependency cycles. Every problem is printed on its own line as "
    "FILE: KEY: MESSAGE. Exit status 0 when valid, 1 otherwise."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check definition files and report every problem",
        description=DESCRIPTION,
    )
    add_definitions_option(parser)
    parser.set_defaults(func=run)


def add_definitions_option(parser: argparse.ArgumentParser) -> None:
    """`[DIR]` or `-d/--definitions DIR`, shared by every command that reads definitions."""
    parser.add_argument(
        "dir",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="definitions folder (same as --definitions)",
    )
    parser.add_argument(
        "-d",
        "--definitions",
        type=Path,
        metavar="DIR",
        help=f"definitions folder (default: ${DEFINITIONS_ENV}, else the bundled infra/examples)",
    )


def definitions_dir(args: argparse.Namespace) -> Path:
    """The folder chosen by `--definitions`, a positional DIR, the environment or the default."""
    given = getattr(args, "definitions", None)
    positional = getattr(args, "dir", None)
    if given is not None and positional is not None and given != positional:
        raise CliError(f"two definitions folders given: {positional} and --definitions {given}")
    chosen: Path | None = given or positional
    return chosen if chosen is not None else default_definitions_dir()


def env_policy() -> EnvPolicy:
    """The denied environment variables of this installation: the defaults adjusted by
    $CYCLONETIX_DENY_ENV (`NAME` to deny as well, `-NAME` to allow a default one again)."""
    try:
        return parse_deny_env(os.environ.get(DENY_ENV_VARIABLE, ""))
    except Invalid as exc:
        raise CliError(printable(str(exc))) from None


def load_or_report(path: Path) -> Definitions | None:
    """The definitions in `path`, or None after printing every problem to stderr."""
    try:
        return load_definitions_folder(path, env_policy=env_policy())
    except DefinitionErrors as exc:
        for error in exc.errors:
            print(printable(str(error)), file=sys.stderr)
        count = len(exc.errors)
        print(
            f"{count} error{'s' if count != 1 else ''} in {printable(str(path))}", file=sys.stderr
        )
        return None


def run(args: argparse.Namespace) -> int:
    path = definitions_dir(args)
    defs = load_or_report(path)
    if defs is None:
        return 1
    print(f"ok: {summary(defs)} in {path}")
    return 0


def summary(defs: Definitions) -> str:
    """`12 tasks, 2 dags, 2 contexts, 1 parameter set`."""
    counts = (
        (len(defs.tasks), "task"),
        (len(defs.dags), "dag"),
        (len(defs.contexts), "context"),
        (len(defs.parameter_sets), "parameter set"),
    )
    return ", ".join(f"{n} {word}{'' if n == 1 else 's'}" for n, word in counts)
