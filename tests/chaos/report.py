"""The chaos table: one row per scenario, printed after each scenario and at the end."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pytest

COLUMNS = (
    "scenario",
    "runs",
    "tasks",
    "faults",
    "redeliveries",
    "longest recovery",
    "lost",
    "stuck",
    "duplicated",
    "seed",
)


@dataclass(frozen=True)
class Row:
    scenario: str
    runs: int
    tasks: int
    faults: int
    redeliveries: int
    longest_recovery: float | None  # seconds; None: no fault had anything to recover
    lost: int
    stuck: int
    duplicated: int
    seed: int
    notes: tuple[str, ...] = ()  # one line per fault, and the execution counts

    def cells(self) -> tuple[str, ...]:
        recovery = "-" if self.longest_recovery is None else f"{self.longest_recovery:.1f}s"
        return (
            self.scenario,
            str(self.runs),
            str(self.tasks),
            str(self.faults),
            str(self.redeliveries),
            recovery,
            str(self.lost),
            str(self.stuck),
            str(self.duplicated),
            str(self.seed),
        )


def table(rows: list[Row]) -> str:
    body = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]

    def line(cells: tuple[str, ...]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    rule = "-" * len(line(COLUMNS))
    notes = [f"{row.scenario}: {note}" for row in rows for note in row.notes]
    return "\n".join([line(COLUMNS), rule, *(line(row.cells()) for row in rows), *notes])


# The rows of this pytest process. Under pytest-xdist a worker runs the scenarios and sends its
# rows to the controller at its end (`WORKER_OUTPUT`), which prints the table
# (tests/conftest.py: the chaos conftest is not loaded there).
ROWS = pytest.StashKey[list[Row]]()
WORKER_OUTPUT = "cyclonetix_chaos"


def rows_out(rows: list[Row], long: bool) -> dict[str, Any]:
    """Rows as a worker sends them (plain data, what execnet carries)."""
    return {"long": long, "rows": [dataclasses.asdict(r) for r in rows]}


def rows_in(sent: dict[str, Any]) -> list[Row]:
    return [Row(**{**r, "notes": tuple(r["notes"])}) for r in sent["rows"]]


def print_table(reporter: Any, rows: list[Row], long: bool) -> None:
    if rows:
        size = "long" if long else "CI"
        reporter.write_sep("=", f"chaos ({size} size, seed {rows[0].seed})")
        reporter.write_line(table(rows))
