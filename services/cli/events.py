"""`cyclonetix events RUN_ID`: the history of a run, one event per line."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from core.events import TERMINAL, AnyEvent, encode
from core.text import printable
from services.cli.common import add_nats_option, connect, run
from services.cli.main import CliError


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "events",
        help="print the events of a run",
        description="Print the history of a run, one event per line, oldest first.",
    )
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events until the run ends"
    )
    parser.add_argument("--json", action="store_true", help="print each event as stored (JSON)")
    add_nats_option(parser)
    parser.set_defaults(func=lambda args: run(print_events(args)))


def line(seq: int, event: AnyEvent, as_json: bool) -> str:
    if as_json:
        return encode(event).decode()
    fields = msgspec.to_builtins(event)
    fields.pop("run_id", None)
    kind = fields.pop("type")
    ts = fields.pop("ts")
    task = fields.pop("task_id", "")
    # (A notification's attempt is not a task's: it stays among the details.)
    attempt = fields.pop("attempt", None) if task else None
    if kind == "RunScheduled":
        fields = {
            "target": fields["target"],
            "tasks": len(fields["graph"]),
            "trigger": fields["trigger"],
            "notify": len(fields.get("notify", ())) or None,
        }
    elif kind == "TasksQueued":
        queued = fields.pop("tasks")
        task = f"{len(queued)} task{'s' if len(queued) != 1 else ''}"
        fields = {"queued": " ".join(f"{t['task_id']}#{t['attempt']}@{t['queue']}" for t in queued)}
    elif kind.startswith("Notification"):
        fields.pop("notification", None)
        if fields.get("retry_at") is None:
            fields.pop("retrying", None)  # (retrying=False: the last attempt)
    where = f"{task}#{attempt}" if attempt is not None else task
    details = " ".join(f"{k}={_short(v)}" for k, v in fields.items() if v not in (None, "", {}, []))
    # Names, parameters and messages are user-supplied: no control character reaches the
    # terminal (--json stays exact).
    return printable(f"{seq:>8}  {ts}  {kind:<20} {where:<28} {details}".rstrip())


async def print_events(args: argparse.Namespace) -> int:
    backplane = await connect(args, "cyclonetix-cli")
    try:
        history = await backplane.events.history(args.run_id)
        if not history:
            raise CliError(f"no run {args.run_id!r}")
        for seq, event in history:
            print(line(seq, event, args.json))
        ended = any(isinstance(e, TERMINAL) for _, e in history)
        if args.follow and not ended:
            sys.stdout.flush()
            follow = backplane.events.follow_run(args.run_id, from_seq=history[-1][0] + 1)
            async for seq, event in follow:
                print(line(seq, event, args.json), flush=True)
                if isinstance(event, TERMINAL):
                    break
    finally:
        await backplane.close()
    return 0


def _short(value: object, limit: int = 80) -> str:
    text = str(value).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"
