"""`cyclonetix runs show|cancel|rerun`: look at one run, stop it, or run it again."""

from __future__ import annotations

import argparse
import json
from typing import Any

from core.run import summary
from services import commands
from services.cli.common import add_nats_option, connect, human_duration, run


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "runs",
        help="show, cancel or rerun runs",
        description="Show, cancel or rerun runs.",
    )
    actions = parser.add_subparsers(dest="action", metavar="show|cancel|rerun", required=True)
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
        help="run a run again, or one task and everything downstream of it",
        description="Start a new run from an earlier run's own graph snapshot (what ran then, "
        "not today's definitions). With --from TASK only that task and the tasks downstream "
        "of it run; their other dependencies count as done. Prints the new run id.",
    )
    rerun.add_argument("run_id", metavar="RUN_ID")
    rerun.add_argument("--from", dest="from_task", metavar="TASK", help="rerun from this task")
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
        await commands.cancel(backplane.events, args.run_id, reason=args.reason, by="cli")
    finally:
        await backplane.close()
    print(f"cancel requested for {args.run_id}")
    return 0


async def rerun_run(args: argparse.Namespace) -> int:
    backplane = await connect(args, "cyclonetix-cli")
    try:
        scheduled = await commands.rerun(
            backplane.events, args.run_id, from_task=args.from_task, run_as=args.new_run_id
        )
    finally:
        await backplane.close()
    if args.json:
        print(json.dumps({"run_id": scheduled.run_id, "status": "scheduled"}))
    else:
        print(scheduled.run_id)
    return 0
