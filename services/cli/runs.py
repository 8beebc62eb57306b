"""`cyclonetix runs show|cancel`: look at one run, or stop it."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from core.events import RunCancelRequested
from core.run import RunState, fold, summary
from services.cli.common import add_nats_option, connect, human_duration, run
from services.cli.main import CliError

if TYPE_CHECKING:
    from services.ports import EventLog


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "runs", help="show or cancel runs", description="Show or cancel runs."
    )
    actions = parser.add_subparsers(dest="action", metavar="show|cancel", required=True)
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


async def load_run(events: EventLog, run_id: str) -> RunState:
    state: RunState | None = None
    for _seq, event in await events.history(run_id):
        state = fold(state, event)
    if state is None:
        raise CliError(f"no run {run_id!r}")
    return state


async def show_run(args: argparse.Namespace) -> int:
    backplane = await connect(args, "cyclonetix-cli")
    try:
        state = await load_run(backplane.events, args.run_id)
    finally:
        await backplane.close()
    if args.json:
        print(json.dumps(summary(state)))
        return 0
    status = summary(state)["status"]
    print(f"run      {state.run_id}")
    print(f"name     {state.name} ({state.kind} {state.target})")
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
            f"{task_id:<28} {task.status:<13} {task.attempt:>7}  {task.node.queue:<12} "
            f"{task.agent_id:<24} {duration}"
        )
    return 0


async def cancel_run(args: argparse.Namespace) -> int:
    backplane = await connect(args, "cyclonetix-cli")
    try:
        state = await load_run(backplane.events, args.run_id)
        if state.finished:
            raise CliError(f"run {args.run_id!r} already ended {state.status}", 1)
        await backplane.events.append(
            RunCancelRequested(
                run_id=args.run_id, ts=dt.datetime.now(dt.UTC), reason=args.reason, by="cli"
            )
        )
    finally:
        await backplane.close()
    print(f"cancel requested for {args.run_id}")
    return 0
