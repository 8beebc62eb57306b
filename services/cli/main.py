"""`cyclonetix`: one command, a subcommand per role and per operation.

Each subcommand lives in its own module under services/cli/ and exposes
`register(subparsers) -> None`, which adds its parser and sets `func` to a callable taking the
parsed namespace and returning the exit code. Errors the user can fix are raised as `CliError`
and printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from core.errors import Conflict, CyclonetixError, Invalid, NotFound, Unavailable
from core.text import printable

# Modules under services/cli/ that provide subcommands, in the order `--help` lists them.
COMMANDS = (
    "dev",
    "orchestrator",
    "agent",
    "projector",
    "ui",
    "users",
    "tokens",
    "audit",
    "schedule",
    "schedules",
    "triggers",
    "runs",
    "events",
    "replay",
    "logs",
    "validate",
    "graph",
    "bench",
)


class CliError(Exception):
    """An error the user can fix: printed as one line `cyclonetix: error: <message>`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# The exit code of each kind of error (core.errors), most specific first; 1 is also what a
# failed run or invalid definitions exit with, 2 what argparse uses for bad usage.
EXIT_CODES: tuple[tuple[type[CyclonetixError], int], ...] = (
    (Conflict, 1),
    (Invalid, 2),
    (NotFound, 2),
    (Unavailable, 3),
    (CyclonetixError, 2),
)


def exit_code(exc: CyclonetixError) -> int:
    return next(code for kind, code in EXIT_CODES if isinstance(exc, kind))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cyclonetix",
        description="Event-sourced workflow orchestrator on NATS JetStream.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"services.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"services.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"cyclonetix {version('cyclonetix')}"
    except PackageNotFoundError:
        return "cyclonetix (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # One-shot commands print results on stdout; only warnings go to stderr. Long-running
    # roles configure their own logging from --log-format/--log-level.
    from services.logging import configure_logging

    configure_logging(json=False, level="WARNING")
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"cyclonetix: error: {_shown(exc)}", file=sys.stderr)
        return exc.code
    except CyclonetixError as exc:
        print(f"cyclonetix: error: {_shown(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


def _shown(exc: Exception) -> str:
    """An error's lines with no control character in them (they may quote user input)."""
    return "\n".join(printable(line) for line in str(exc).split("\n"))


if __name__ == "__main__":
    sys.exit(main())
