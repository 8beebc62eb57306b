"""`cyclonetix logs RUN_ID TASK_ID`: what a task's command printed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING, Any

from core.run import TASK_DONE
from services.cli.common import add_nats_option, connect, follow_state, run
from services.cli.main import CliError

if TYPE_CHECKING:
    from services.ports import EventLog, LogStore


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "logs",
        help="print a task's output",
        description="Print the output (stdout and stderr, as captured) of a task of a run.",
    )
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument("task_id", metavar="TASK_ID")
    parser.add_argument("--attempt", type=int, help="only this attempt (default: all)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the task has ended"
    )
    add_nats_option(parser)
    parser.set_defaults(func=lambda args: run(print_logs(args)))


async def print_logs(args: argparse.Namespace) -> int:
    backplane = await connect(args, "cyclonetix-cli")
    out = sys.stdout.buffer
    try:
        history = await backplane.events.history(args.run_id)
        if not history:
            raise CliError(f"no run {args.run_id!r}")
        if not args.follow:
            async for _attempt, chunk in backplane.logs.read(
                args.run_id, args.task_id, args.attempt
            ):
                out.write(chunk)
            return 0
        reader = asyncio.ensure_future(_copy(backplane.logs, args, out))
        await _task_ended(backplane.events, args.run_id, args.task_id)
        # Output is published before the result, so a short quiet period after it ends
        # is enough to print the last chunks.
        await asyncio.sleep(0.5)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    finally:
        out.flush()
        await backplane.close()
    return 0


async def _copy(logs: LogStore, args: argparse.Namespace, out: Any) -> None:
    async for _attempt, chunk in logs.read(args.run_id, args.task_id, args.attempt, follow=True):
        out.write(chunk)
        out.flush()


async def _task_ended(events: EventLog, run_id: str, task_id: str) -> None:
    """Returns once the task is done for good (a failed attempt may still be retried)."""
    async for _event, state in follow_state(events, run_id):
        task = state.tasks.get(task_id)
        if state.finished or (task is not None and task.status in TASK_DONE):
            return
