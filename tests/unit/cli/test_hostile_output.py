"""Hostile input seen from the CLI: user-supplied text never prints a control character (JSON
stays exact), and refused definitions or parameters are one line each, naming what and where."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import msgspec
import pytest

from core.definitions import MAX_FILE_BYTES
from core.events import TaskFailed, encode
from core.run import RunStatus, fold
from projections.views import Page, RunRow
from services.cli.events import line
from services.cli.main import main
from services.cli.runs import format_page
from services.cli.schedule import progress_line
from tests.unit.cli.test_runs_list import row
from tests.unit.core.runkit import node, scheduled

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
EVIL = "\x1b]0;pwned\x07\x1b[2J\x9b31m"
FAILED = TaskFailed(run_id="run-1", ts=T0, task_id="t", attempt=1, reason="exit", message=EVIL)


def no_controls(text: str) -> bool:
    return not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


def test_an_event_line_escapes_control_characters_and_json_stays_exact() -> None:
    shown = line(3, FAILED, as_json=False)
    assert no_controls(shown) and "\\x1b]0;pwned\\x07" in shown
    assert line(3, FAILED, as_json=True) == encode(FAILED).decode()


def test_schedule_progress_escapes_a_message() -> None:
    state = fold(None, scheduled(node("t")))
    assert state is not None
    shown = progress_line(state, FAILED)
    assert shown is not None and no_controls(shown) and "\\x9b31m" in shown


def test_runs_list_escapes_user_text() -> None:
    evil = msgspec.structs.replace(row("r-1", RunStatus.SUCCEEDED, 1), trigger=EVIL, target=EVIL)
    page: Page[RunRow] = Page(items=(evil,), next_cursor=None)
    assert all(no_controls(text) for text in format_page(page))


def definitions(tmp_path: Path, task: str) -> Path:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "t.yaml").write_text(task)
    return tmp_path


def test_validate_refuses_a_denied_variable_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CYCLONETIX_DENY_ENV", raising=False)
    folder = definitions(tmp_path, "id: t\ncommand: x\nparameters: {LD_PRELOAD: /x.so}\n")
    assert main(["validate", str(folder)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("tasks/t.yaml: parameters.LD_PRELOAD: LD_PRELOAD is a denied")
    assert err[1] == f"1 error in {folder}"
    monkeypatch.setenv("CYCLONETIX_DENY_ENV", "-LD_PRELOAD")
    assert main(["validate", str(folder)]) == 0
    monkeypatch.setenv("CYCLONETIX_DENY_ENV", "NOT VALID")
    assert main(["validate", str(folder)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("cyclonetix: error: CYCLONETIX_DENY_ENV: invalid entry")


def test_validate_refuses_an_oversized_file_without_reading_it_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = definitions(tmp_path, "id: t\ncommand: x\n")
    with (folder / "tasks" / "big.yaml").open("wb") as f:
        f.truncate(10 * MAX_FILE_BYTES)  # (sparse: 50 MB on paper)
    assert main(["validate", str(folder)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"tasks/big.yaml: file is {10 * MAX_FILE_BYTES} bytes, more than the limit of "
        f"{MAX_FILE_BYTES} (5 MiB) for a definitions file"
    )


def test_validate_errors_escape_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = definitions(tmp_path, f"id: t\ncommand: x\ndependencies: [{json.dumps(EVIL)}]\n")
    assert main(["validate", str(folder)]) == 1
    err = capsys.readouterr().err
    assert no_controls(err.replace("\n", "")) and len(err.splitlines()) == 2


@pytest.mark.parametrize(
    ("param", "says"),
    [
        ("LD_PRELOAD=/x.so", "--param LD_PRELOAD: LD_PRELOAD is a denied"),
        ("A=x\0y", "--param A: the value holds a NUL byte"),
        (f"{EVIL}=1", "invalid --param"),
    ],
)
def test_schedule_refuses_a_bad_param_in_one_line_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], param: str, says: str
) -> None:
    folder = definitions(tmp_path, "id: t\ncommand: x\n")
    argv = ["schedule", "task", "t", "-d", str(folder), "--param", param]
    argv += ["--nats-url", "nats://127.0.0.1:1"]  # (never reached)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cyclonetix: error: {says}")
    assert err.count("\n") == 1 and no_controls(err[:-1])
