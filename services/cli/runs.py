"""`cyclonetix runs list|show|cancel|rerun`: list runs, look at one, stop it, or run it again.

`list` reads the read model (services/read_model_client.py says which and how); `show`,
`cancel` and `rerun` work from the event log. A rerun is a new run linked to the earlier one
(`core/rerun.py` says why), never new attempts in a run that may have ended.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from typing import Any

import msgspec

from core.run import RunStatus, summary
from core.text import printable
from projections.views import Page, RunFilter, RunRow
from services import commands
from services.cli.common import add_nats_option, connect, human_duration, nats_url, run
from services.cli.main import CliError
from services.read_model_client import READ_MODEL_ENV, open_reader, resolve_read_model_url
from services.settings import load_settings

LIST_LIMIT = 50
_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "runs",
        help="show, cancel or rerun runs",
        description="Show, cancel or rerun runs.",
    )
    actions = parser.add_subparsers(dest="action", metavar="list|show|cancel|rerun", required=True)
    listing = actions.add_parser(
        "list",
        help="runs from the read model, newest first",
        description="List runs, newest first, from the read model: --read-model URL, else "
        f"${READ_MODEL_ENV}, else the one 'cyclonetix dev' recorded in ./.cyclonetix/. "
        "Pass the printed --cursor for the next page.",
    )
    listing.add_argument("--status", metavar="S", help=f"only runs in this status ({_statuses()})")
    listing.add_argument("--dag", metavar="D", help="only runs of this DAG")
    listing.add_argument(
        "--task", metavar="T", help="only runs whose graph holds this task (not with --dag)"
    )
    listing.add_argument(
        "--since", metavar="T", help="scheduled at or after T: ISO time, or 30m, 1h, 2d ago"
    )
    listing.add_argument("--until", metavar="T", help="scheduled before T (as --since)")
    listing.add_argument(
        "--limit",
        metavar="N",
        default=str(LIST_LIMIT),
        help=f"runs per page (default {LIST_LIMIT})",
    )
    listing.add_argument("--cursor", metavar="C", help="the next page after a previous one")
    listing.add_argument(
        "--json", action="store_true", help='print the page: {"items": [...], "next_cursor"}'
    )
    listing.add_argument(
        "--read-model",
        metavar="URL",
        help="redis://..., postgresql://..., or nats+memory:// (the memory store of "
        "'cyclonetix dev', asked over NATS)",
    )
    add_nats_option(listing)
    listing.set_defaults(func=lambda args: run(list_runs(args)))
    show = actions.add_parser(
        "show",
        help="status of a run and its tasks",
        description="Print a run's status and every task's status, rebuilt from its events.",
    )
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument(
        "--json",
        action="store_true",
        help='print {"run_id", "status", "tasks": {task: status}} (same as schedule --wait --json)',
    )
    add_nats_option(show)
    show.set_defaults(func=lambda args: run(show_run(args)))
    cancel = actions.add_parser(
        "cancel",
        help="cancel a run",
        description="Ask the orchestrator to cancel a run: waiting tasks are skipped, queued "
        "ones cancelled, and the run ends 'cancelled' once running tasks are done.",
    )
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--reason", default="cancelled from the CLI", help="recorded in the log")
    add_nats_option(cancel)
    cancel.set_defaults(func=lambda args: run(cancel_run(args)))
    rerun = actions.add_parser(
        "rerun",
        help="run a run again: all of it, from its failure, or from one task",
        description="Start a NEW run from an earlier run's own graph snapshot (what ran then, "
        "not today's definitions) and its context, linked to it (rerun_of). The earlier run "
        "stays as it was — its history is an immutable record and a run id is used once, so a "
        "finished run is never re-opened — and the new one has its own id, status and "
        "timeline. Without an option every task runs again. Prints the new run id.",
    )
    rerun.add_argument("run_id", metavar="RUN_ID")
    which = rerun.add_mutually_exclusive_group()
    which.add_argument(
        "--from-failure",
        action="store_true",
        help="run only the tasks that did not succeed (failed, skipped, cancelled, never ran); "
        "those that succeeded are not run again and their results (the run's context) are "
        "reused",
    )
    which.add_argument(
        "--task",
        dest="from_task",
        metavar="T",
        help="run task T and everything downstream of it; its other dependencies count as done",
    )
    which.add_argument("--from", dest="from_task", metavar="T", help=argparse.SUPPRESS)
    rerun.add_argument("--run-id", dest="new_run_id", metavar="ID", help="id of the new run")
    rerun.add_argument("--json", action="store_true", help='print {"run_id", "status"}')
    add_nats_option(rerun)
    rerun.set_defaults(func=lambda args: run(rerun_run(args)))


async def show_run(args: argparse.Namespace) -> int:
    backplane = await connect(args, "cyclonetix-cli")
    try:
        state = await commands.load_run(backplane.events, args.run_id)
    finally:
        await backplane.close()
    if args.json:
        print(json.dumps(summary(state)))
        return 0
    status = summary(state)["status"]
    print(f"run      {state.run_id}")
    print(printable(f"name     {state.name} ({state.kind} {state.target})"))
    print(f"status   {status}")
    print(f"started  {state.scheduled_at.astimezone():%Y-%m-%d %H:%M:%S}")
    if state.ended_at:
        took = human_duration((state.ended_at - state.scheduled_at).total_seconds())
        print(f"ended    {state.ended_at.astimezone():%Y-%m-%d %H:%M:%S} ({took})")
    print()
    print(f"{'TASK':<28} {'STATUS':<13} {'ATTEMPT':>7}  {'QUEUE':<12} {'AGENT':<24} DURATION")
    for task_id, task in state.tasks.items():
        duration = ""
        if task.started_at and task.finished_at:
            duration = human_duration((task.finished_at - task.started_at).total_seconds())
        print(
            printable(
                f"{task_id:<28} {task.status:<13} {task.attempt:>7}  {task.node.queue:<12} "
                f"{task.agent_id:<24} {duration}"
            )
        )
    return 0


async def cancel_run(args: argparse.Namespace) -> int:
    backplane = await connect(args, "cyclonetix-cli")
    try:
        await commands.cancel(
            backplane.events,
            args.run_id,
            reason=args.reason,
            by="cli",
            requested_by=commands.cli_requester(),
        )
    finally:
        await backplane.close()
    print(f"cancel requested for {args.run_id}")
    return 0


async def rerun_run(args: argparse.Namespace) -> int:
    backplane = await connect(args, "cyclonetix-cli")
    try:
        scheduled = await commands.rerun(
            backplane.events,
            args.run_id,
            from_task=args.from_task,
            from_failure=args.from_failure,
            run_as=args.new_run_id,
            requested_by=commands.cli_requester(),
        )
    finally:
        await backplane.close()
    if args.json:
        print(json.dumps({"run_id": scheduled.run_id, "status": "scheduled"}))
    else:
        print(scheduled.run_id)
    return 0


# -- runs list ------------------------------------------------------------------------------


def _statuses() -> str:
    return ", ".join(RunStatus)


def parse_time(text: str, now: dt.datetime) -> dt.datetime:
    """An ISO time (local time when it names no zone) or `N` + s/m/h/d/w: that long before
    `now`. CliError (one line) for anything else."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        amount, unit = relative.groups()
        return now - dt.timedelta(**{_UNITS[unit]: int(amount)})
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"not a time: {text!r} (use an ISO time like 2026-01-31T12:00, or 30m, 1h, 2d)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, as people write it
    return when.astimezone(dt.UTC)


def list_query(args: argparse.Namespace, now: dt.datetime) -> tuple[RunFilter, int, str | None]:
    """The filter, page size and cursor of `runs list`; CliError (one line) for bad input."""
    status: RunStatus | None = None
    if args.status is not None:
        try:
            status = RunStatus(args.status.lower())
        except ValueError:
            raise CliError(
                f"not a run status: {args.status!r} (use one of {_statuses()})"
            ) from None
    if args.dag and args.task:
        raise CliError("--dag and --task exclude each other: give one")
    try:
        limit = int(args.limit)
    except ValueError:
        raise CliError(f"--limit must be a whole number, not {args.limit!r}") from None
    if limit < 1:
        raise CliError(f"--limit must be at least 1, not {limit}")
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    if since is not None and until is not None and since >= until:
        raise CliError("--since must be before --until")
    cursor: str | None = args.cursor
    if cursor is not None and (not cursor.isdigit() or int(cursor) < 1):
        raise CliError(f"not a cursor of this list: {cursor!r} (pass the one a page printed)")
    filter = RunFilter(
        status=status,
        kind="dag" if args.dag else None,
        target=args.dag or None,
        task=args.task or None,
        since=since,
        until=until,
    )
    return filter, limit, cursor


def _counts(row: RunRow) -> str:
    return " ".join(f"{status}={n}" for status, n in row.counts.items() if n)


def _duration(row: RunRow) -> str:
    if row.ended_at is None:
        return ""
    return human_duration(max(0.0, (row.ended_at - row.scheduled_at).total_seconds()))


def format_page(page: Page[RunRow]) -> list[str]:
    """The lines `runs list` prints for a page: a table, and how to get the next page."""
    if not page.items:
        return ["no runs"]
    rows = [
        tuple(
            printable(cell)  # (user-supplied text: no control character reaches the terminal)
            for cell in (
                row.run_id,
                str(row.status),
                f"{row.kind}:{row.target}",
                row.trigger,
                f"{row.scheduled_at.astimezone():%Y-%m-%d %H:%M:%S}",
                _duration(row),
                _counts(row),
            )
        )
        for row in page.items
    ]
    header = ("RUN", "STATUS", "TARGET", "TRIGGER", "SCHEDULED", "DURATION", "TASKS")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    lines = [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)), r[-1]]
        ).rstrip()
        for r in (header, *rows)
    ]
    if page.next_cursor is not None:
        lines.append(f"more: --cursor {page.next_cursor}")
    return lines


async def list_runs(args: argparse.Namespace) -> int:
    filter, limit, cursor = list_query(args, dt.datetime.now(dt.UTC))
    url = resolve_read_model_url(args.read_model, load_settings().data_path)
    async with open_reader(url, lambda: nats_url(args)) as reader:
        try:
            page = await reader.list_runs(filter, limit, cursor)
        except ValueError as exc:  # a cursor no store knows
            raise CliError(str(exc)) from None
    if args.json:
        print(msgspec.json.encode(page).decode())
    else:
        print("\n".join(format_page(page)))
    return 0
