"""Each kind of error has one exit code, and every command reports it as one line."""

from __future__ import annotations

import pytest

from core.errors import Conflict, CyclonetixError, Invalid, NotFound, Unavailable
from services.cli import main as cli_main
from services.ports import RunExists


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Invalid("bad"), 2),
        (NotFound("none"), 2),
        (Conflict("taken"), 1),
        (RunExists("r1"), 1),
        (Unavailable("away"), 3),
        (CyclonetixError("other"), 2),
    ],
)
def test_each_error_kind_has_one_exit_code(
    error: CyclonetixError,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(_args: object) -> int:
        raise error

    parser = cli_main.build_parser()
    args = parser.parse_args(["validate", "."])
    args.func = fail
    monkeypatch.setattr(cli_main, "build_parser", lambda: _Fixed(args))
    assert cli_main.main(["validate", "."]) == code
    err = capsys.readouterr().err
    assert err == f"cyclonetix: error: {error}\n"


class _Fixed:
    def __init__(self, args: object) -> None:
        self.args = args

    def parse_args(self, _argv: object) -> object:
        return self.args
