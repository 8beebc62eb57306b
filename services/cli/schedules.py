"""`cyclonetix schedules`: every cron schedule, its next fire times and its newest run."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from core.cron import zone
from services.cli.common import add_nats_option, connect, run
from services.cli.main import CliError
from services.cron import describe, utcnow

DEFAULT_NEXT = 3


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "schedules",
        help="cron schedules: next fire times and last run",
        description="List each task and DAG with a cron schedule in the published definitions: "
        "its cron, time zone, catch-up and max_active_runs, its next fire times (in its own "
        "zone) and the newest run it started with that run's status.",
    )
    parser.add_argument(
        "--next",
        metavar="N",
        type=_count,
        default=DEFAULT_NEXT,
        help=f"how many next fire times to show (default {DEFAULT_NEXT})",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list, times in UTC (ISO 8601)"
    )
    add_nats_option(parser)
    parser.set_defaults(func=lambda args: run(list_schedules(args)))


def _count(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected a number 0-1000, got {text!r}")
    return int(text)


async def list_schedules(args: argparse.Namespace) -> int:
    backplane = await connect(args, "cyclonetix-cli")
    try:
        defs = await backplane.definitions.load()
        if not (defs.tasks or defs.dags):
            raise CliError(
                "no definitions published: start the orchestrator with --definitions DIR"
            )
        infos = await describe(backplane.events, defs, backplane.schedules, utcnow(), args.next)
    finally:
        await backplane.close()
    if args.json:
        print(msgspec.json.encode(infos).decode())
        return 0
    if not infos:
        print("no schedules: give a task or DAG `schedule: <cron>` to add one")
        return 0
    for info in infos:
        tz = zone(info.timezone)
        options = (
            f"catchup {'on' if info.catchup else 'off'}, max_active_runs {info.max_active_runs}"
        )
        print(f"{info.kind} {info.id}   {info.cron!r} {info.timezone} ({options})")
        for moment in info.next:
            print(f"  next  {moment.astimezone(tz):%Y-%m-%d %H:%M %Z}")
        if info.last_run:
            print(f"  last  {info.last_run}  {info.last_status}")
        else:
            print("  last  none yet")
        if len(info.open) > 1 or (info.open and info.open[0] != info.last_run):
            print(f"  open  {', '.join(info.open)}")
    return 0
