"""Every command and subcommand answers --help with a description."""

from __future__ import annotations

import argparse

import pytest

from services.cli.main import build_parser


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += commands(sub, (*path, name))
    return found


ALL = commands(build_parser())


def test_every_role_and_operation_is_a_command() -> None:
    top = {path[0] for path, _ in ALL if len(path) == 1}
    assert {"dev", "orchestrator", "agent", "schedule", "runs", "events", "logs"} <= top
    assert {"validate", "graph", "bench"} <= top


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=lambda p: " ".join(p) or "cyclonetix")
def test_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*path, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cyclonetix")
    parser = dict(ALL)[path]
    assert parser.description, f"{' '.join(path)} has no description"
