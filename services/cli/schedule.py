"""`cyclonetix schedule task|dag`: start a run, optionally follow it to the end."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core.events import (
    AnyEvent,
    GraphExtended,
    RunScheduled,
    TaskEvent,
    TaskFailed,
    TaskQueued,
    TaskRetryScheduled,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    each_queued,
)
from core.run import RunState, RunStatus, run_summary, summary
from core.text import printable
from services import commands
from services.cli.common import (
    add_nats_option,
    connect,
    follow_state,
    human_duration,
    load_definitions_or_fail,
    run,
)
from services.cli.main import CliError
from services.cli.validate import env_policy
from services.commands import ScheduleRequest
from services.ports import EventLog


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "schedule",
        help="start a run of a task (outcome) or a DAG",
        description="Start a run. 'task ID' makes that task happen: its prerequisites are "
        "assembled into the run automatically. 'dag ID' runs every task of a DAG.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="task|dag", required=True)
    for kind, what in (("task", "the task to make happen"), ("dag", "the DAG to run")):
        p = kinds.add_parser(kind, help=f"schedule {what}", description=f"Schedule {what}.")
        p.add_argument("id", metavar="ID", help=what)
        p.add_argument("--context", metavar="NAME", help="context whose variables the run gets")
        p.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="K=V",
            help="override a parameter: KEY=VALUE for every task, TASK.KEY=VALUE for one "
            "(repeatable)",
        )
        p.add_argument("--run-id", metavar="ID", help="choose the run id (letters, digits, _ -)")
        p.add_argument(
            "--wait",
            action="store_true",
            help="follow the run to its end; exit 0 if it succeeded, 1 otherwise",
        )
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.add_argument(
            "-d",
            "--definitions",
            type=Path,
            metavar="DIR",
            help="resolve against the definitions in DIR instead of the published ones",
        )
        add_nats_option(p)
        p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    return run(schedule(args))


async def schedule(args: argparse.Namespace) -> int:
    request = ScheduleRequest(
        kind="outcome" if args.kind == "task" else "dag",
        target=args.id,
        context=args.context,
        params=tuple(args.param),
        run_id=args.run_id,
        requested_by=commands.cli_requester(),
    )
    # With local definitions, bad input is reported before any connection is attempted.
    policy = env_policy()
    local = load_definitions_or_fail(args.definitions) if args.definitions else None
    if local is not None:
        commands.plan(local, request, env_policy=policy)
    backplane = await connect(args, "cyclonetix-cli")
    try:
        scheduled = await commands.schedule(
            backplane.events, local or backplane.definitions, request, env_policy=policy
        )
        run_id = scheduled.run_id
        if not args.wait:
            if args.json:
                print(json.dumps({"run_id": run_id, "status": "scheduled"}))
            else:
                print(run_id)
            return 0
        if not args.json:
            print(f"scheduled {run_id} ({scheduled.tasks} tasks)", file=sys.stderr)
        progress = not args.json or sys.stderr.isatty()
        state = await follow(backplane.events, run_id, progress=progress)
    finally:
        await backplane.close()
    result = run_summary(state)
    if args.json:
        print(json.dumps(summary(state)))
    else:
        print(describe_end(state))
    return 0 if result.status == RunStatus.SUCCEEDED else 1


async def follow(events: EventLog, run_id: str, *, progress: bool) -> RunState:
    """Fold a run's events as they arrive until its terminal event; print transitions."""
    async for event, state in follow_state(events, run_id):
        if progress:
            for part in each_queued(event) or (event,):  # a line per attempt queued
                if line := progress_line(state, part):
                    print(line, file=sys.stderr, flush=True)
        if state.finished:
            return state
    raise CliError(f"lost the event stream of run {run_id!r}")


def progress_line(state: RunState, event: AnyEvent) -> str | None:
    clock = event.ts.astimezone().strftime("%H:%M:%S.%f")[:-3]
    if isinstance(event, RunScheduled):
        return None
    if isinstance(event, TaskQueued):
        what = f"queued on {event.queue}" + (
            f" (attempt {event.attempt})" if event.attempt > 1 else ""
        )
    elif isinstance(event, TaskStarted):
        what = f"started on {event.agent_id}" + (
            f" (delivery {event.delivery})" if event.delivery > 1 else ""
        )
    elif isinstance(event, TaskSucceeded):
        what = f"succeeded in {human_duration(event.duration_ms / 1000)}"
    elif isinstance(event, TaskFailed):
        why = {"exit": f"exit code {event.exit_code}", "timeout": "timed out"}.get(
            event.reason, event.reason.replace("_", " ")
        )
        what = f"failed: {why}" + (f" ({event.message})" if event.message else "")
    elif isinstance(event, TaskRetryScheduled):
        what = f"retry {event.attempt} at {event.not_before.astimezone():%H:%M:%S}"
    elif isinstance(event, TaskSkipped):
        what = f"skipped ({event.reason}{': ' + event.upstream if event.upstream else ''})"
    elif isinstance(event, GraphExtended):
        added = ", ".join(n.id for n in event.nodes) or "nothing"
        what = f"extended the run with {added}"
    elif isinstance(event, TaskEvent):
        what = type(event).__name__
    else:
        return f"{clock}  run {type(event).__name__.removeprefix('Run').lower()}"
    # (Messages and ids may quote user input: no control character reaches the terminal.)
    return printable(f"{clock}  {event.task_id:<24} {what}")


def describe_end(state: RunState) -> str:
    counts: dict[str, int] = {}
    for task in state.tasks.values():
        counts[task.status] = counts.get(task.status, 0) + 1
    took = ""
    if state.ended_at is not None:
        took = f" in {human_duration((state.ended_at - state.scheduled_at).total_seconds())}"
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return printable(f"run {state.run_id} {state.status}{took}: {parts}")
