"""`cyclonetix runs list` without a system: its arguments, times, table, and where it finds the
read model."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest

from core.run import RunStatus, TaskStatus
from projections.views import Page, RunFilter, RunRow, empty_counts
from services.cli.main import CliError, build_parser
from services.cli.runs import format_page, list_query, parse_time
from services.read_model_client import (
    NATS_MEMORY,
    READ_MODEL_ENV,
    NoReadModel,
    open_reader,
    recorded_url,
    resolve_read_model_url,
)
from services.runtime_info import write_runtime_info

NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["runs", "list", *argv])


def query(*argv: str) -> tuple[RunFilter, int, str | None]:
    return list_query(parse(*argv), NOW)


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("10s", dt.timedelta(seconds=10)),
        ("30m", dt.timedelta(minutes=30)),
        ("1h", dt.timedelta(hours=1)),
        ("2d", dt.timedelta(days=2)),
        ("1w", dt.timedelta(weeks=1)),
    ],
)
def test_relative_times_count_back_from_now(text: str, ago: dt.timedelta) -> None:
    assert parse_time(text, NOW) == NOW - ago


def test_iso_times_with_a_zone_and_without_one_in_local_time() -> None:
    assert parse_time("2026-03-01T08:00:00+02:00", NOW) == dt.datetime(
        2026, 3, 1, 6, 0, tzinfo=dt.UTC
    )
    local = parse_time("2026-03-01T08:00", NOW)
    assert local.tzinfo is not None
    assert local == dt.datetime(2026, 3, 1, 8, 0).astimezone()


@pytest.mark.parametrize("text", ["yesterday", "5 parsecs", "1y", "-1h", ""])
def test_a_bad_time_is_one_line_naming_the_forms(text: str) -> None:
    with pytest.raises(CliError, match=r"not a time: .*ISO time.*30m, 1h, 2d"):
        parse_time(text, NOW)


def test_no_options_list_everything_fifty_at_a_time() -> None:
    assert query() == (RunFilter(), 50, None)


def test_every_option_reaches_the_filter() -> None:
    got = query(
        "--status", "FAILED", "--dag", "etl", "--since", "1h", "--until", "2026-03-10T12:00Z",
        "--limit", "5", "--cursor", "42",
    )  # fmt: skip
    assert got == (
        RunFilter(
            status=RunStatus.FAILED,
            kind="dag",
            target="etl",
            since=NOW - dt.timedelta(hours=1),
            until=NOW,
        ),
        5,
        "42",
    )
    assert query("--task", "extract")[0] == RunFilter(task="extract")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--status", "broken"], "not a run status: 'broken' (use one of scheduled, running, "
         "succeeded, failed, cancelled)"),
        (["--dag", "d", "--task", "t"], "--dag and --task exclude each other"),
        (["--limit", "x"], "--limit must be a whole number"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--since", "1h", "--until", "2h"], "--since must be before --until"),
        (["--cursor", "abc"], "not a cursor of this list: 'abc'"),
        (["--cursor", "0"], "not a cursor of this list: '0'"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(CliError) as caught:
        query(*argv)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.code == 2


def row(run_id: str, status: RunStatus, seq: int, **fields: Any) -> RunRow:
    counts = empty_counts()
    counts[TaskStatus.SUCCEEDED] = 2
    if status is RunStatus.FAILED:
        counts[TaskStatus.FAILED] = 1
    return RunRow(
        run_id=run_id,
        kind="dag",
        target="etl",
        name="etl",
        status=status,
        trigger="cli",
        counts=counts,
        tasks_total=3,
        scheduled_at=NOW,
        scheduled_seq=seq,
        last_seq=seq + 5,
        **fields,
    )


def test_the_table_has_a_row_per_run_and_the_next_cursor() -> None:
    page = Page(
        items=(
            row("run-b", RunStatus.FAILED, 9, ended_at=NOW + dt.timedelta(seconds=3.5)),
            row("run-a", RunStatus.RUNNING, 4),
        ),
        next_cursor="4",
    )
    lines = format_page(page)
    assert lines[0].split() == [
        "RUN", "STATUS", "TARGET", "TRIGGER", "SCHEDULED", "DURATION", "TASKS",
    ]  # fmt: skip
    assert lines[1].split()[:4] == ["run-b", "failed", "dag:etl", "cli"]
    assert "3.50 s" in lines[1] and lines[1].endswith("succeeded=2 failed=1")
    assert lines[2].split()[:2] == ["run-a", "running"] and lines[2].endswith("succeeded=2")
    assert lines[1].index("failed") == lines[2].index("running")  # columns line up
    assert lines[3] == "more: --cursor 4"
    assert format_page(Page(items=page.items)) == lines[:3]


def test_an_empty_page_says_so() -> None:
    assert format_page(Page(items=())) == ["no runs"]


def test_the_read_model_comes_from_the_flag_then_the_variable_then_dev(tmp_path: Path) -> None:
    env = {READ_MODEL_ENV: "redis://env/0"}
    with pytest.raises(NoReadModel, match=r"--read-model URL, set \$CYCLONETIX_READ_MODEL, or"):
        resolve_read_model_url(None, tmp_path, {})
    write_runtime_info(tmp_path, nats_url="nats://x", pid=os.getpid(), read_model=NATS_MEMORY)
    assert resolve_read_model_url(None, tmp_path, {}) == NATS_MEMORY
    assert resolve_read_model_url(None, tmp_path, env) == "redis://env/0"
    assert resolve_read_model_url("postgresql://flag/db", tmp_path, env) == "postgresql://flag/db"


def test_dev_records_memory_as_asked_over_nats() -> None:
    assert recorded_url("memory://") == recorded_url("MEMORY://x") == NATS_MEMORY
    assert recorded_url("redis://h:6379/0?prefix=p") == "redis://h:6379/0?prefix=p"


async def test_a_plain_memory_url_is_refused_with_the_way_to_dev() -> None:
    def no_nats() -> str:
        raise AssertionError("must not look for NATS")

    with pytest.raises(Exception, match=r"private to the process.*--read-model nats\+memory://"):
        async with open_reader("memory://", no_nats):
            pass


def test_runs_list_and_dev_read_model_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    assert "--read-model URL" in capsys.readouterr().out
    assert parse().read_model is None
    dev = build_parser().parse_args(["dev"])
    assert dev.read_model == "memory://"
